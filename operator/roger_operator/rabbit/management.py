"""RabbitMQ's management HTTP API, as the operator uses it: policies, lookups, listings.

Each call reaches the API of the AMQP URL's first node on ``port`` with that URL's
credentials (basic auth; never logged) and vhost, bounded by ``timeout``. None means the
API is off (``port`` None or 0) or did not answer: callers fall back to AMQP or try again
later. ``Broker`` (broker.py) offers these as ``management_call/get/list``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

from roger_operator.rabbit.redaction import addresses


@dataclass(frozen=True)
class _Endpoint:
    host: str
    user: str
    password: str
    vhost: str


def _endpoint(url: str) -> _Endpoint:
    p = urllib.parse.urlparse(addresses(url)[0])  # the management API of the first node
    vhost = urllib.parse.unquote(p.path[1:]) if len(p.path) > 1 else "/"
    return _Endpoint(
        host=p.hostname or "localhost",
        user=urllib.parse.unquote(p.username or "guest"),
        password=urllib.parse.unquote(p.password or "guest"),
        vhost=vhost,
    )


def call(
    port: int | None, timeout: float, url: str, method: str, kind: str, name: str, body: Any = None
) -> int | None:
    """``<method> /api/<kind>/<vhost>/<name>`` with a JSON body: the HTTP status, or
    None when the management API is off or does not answer."""
    if not port:
        return None
    ep = _endpoint(url)
    api = (
        f"http://{ep.host}:{port}/api/{kind}/"
        f"{urllib.parse.quote(ep.vhost, safe='')}/{urllib.parse.quote(name, safe='')}"
    )
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api, data=data, method=method)
    token = b64encode(f"{ep.user}:{ep.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def get(
    port: int | None, timeout: float, url: str, kind: str, name: str, columns: str
) -> dict[str, Any] | None:
    """``/api/<kind>/<vhost>/<name>`` ({} when it does not exist), or None when the
    management API is off or does not answer. A lookup by name stays fast on a broker
    with many queues, where a filtered listing can take a minute."""
    if not port:
        return None
    ep = _endpoint(url)
    api = (
        f"http://{ep.host}:{port}/api/{kind}/"
        f"{urllib.parse.quote(ep.vhost, safe='')}/{urllib.parse.quote(name, safe='')}"
        f"?{urllib.parse.urlencode({'columns': columns})}"
    )
    request = urllib.request.Request(api)
    token = b64encode(f"{ep.user}:{ep.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found: dict[str, Any] = json.load(response)
            return found
    except urllib.error.HTTPError as exc:
        return {} if exc.code == 404 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def list_items(
    port: int | None, timeout: float, url: str, kind: str, pattern: str, columns: str
) -> list[dict[str, Any]] | None:
    """``/api/<kind>/<vhost>`` items whose name matches ``pattern`` (every page), or None
    when the management API is off or unreachable (callers fall back to AMQP)."""
    if not port:
        return None
    ep = _endpoint(url)
    token = b64encode(f"{ep.user}:{ep.password}".encode()).decode()
    items: list[dict[str, Any]] = []
    page, pages = 1, 1
    while page <= pages:
        query = urllib.parse.urlencode(
            {
                "page": page,
                "page_size": 500,
                "name": pattern,
                "use_regex": "true",
                "columns": columns,
            }
        )
        api = f"http://{ep.host}:{port}/api/{kind}/{urllib.parse.quote(ep.vhost, safe='')}?{query}"
        request = urllib.request.Request(api)
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        items.extend(body.get("items") or [])
        pages = int(body.get("page_count") or 1)
        page += 1
    return items
