"""One call to a local RabbitMQ's management API (guest/guest on loopback), for tests and
developer tools."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

LOCAL_API = "http://127.0.0.1:15672/api"  # the 3.10 broker of hack/rabbitmq.sh


def management(
    path: str, method: str = "GET", attempts: int = 5, body: Any = None, api: str = LOCAL_API
) -> Any:
    """The decoded JSON answer (None if empty). A 5xx is asked again: the API answers 500
    now and then while queues come and go on a busy machine."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, method=method, data=data)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    req.add_header("Content-Type", "application/json")
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = r.read()
                return json.loads(answer) if answer else None
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")
