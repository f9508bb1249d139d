"""``--log-format json``: one JSON object per line from the worker, the operator and the
worker pods the operator runs (``spec.worker.logFormat``)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest

from roger.logs import JsonFormatter, configure_logging
from roger_operator.builders.model import LOG_FORMAT_ENV
from roger_operator.cli import parse_args
from tests.unit.test_operator_builders import children, partition

pytestmark = pytest.mark.unit


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info: Any = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("roger.worker", logging.WARNING, __file__, 1, msg, args, info)


def test_json_lines_carry_time_level_logger_message_and_exception() -> None:
    line = JsonFormatter().format(_record('queue "%s" paused\n', "mail", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "roger.worker"
    assert entry["message"] == 'queue "mail" paused\n'
    assert entry["time"].endswith("+00:00") and "ValueError: boom" in entry["exception"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        configure_logging("INFO", "xml")


def test_the_worker_cli_refuses_an_unknown_format() -> None:
    """(The worker's JSON lines: tests/integration/test_install_without_extras.py.)"""
    code = "import sys; from roger.cli import main; sys.exit(main(sys.argv[1:]))"
    refused = subprocess.run(
        [sys.executable, "-c", code, "--log-format", "xml", "info"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "json" in refused.stderr


def test_the_operator_takes_the_flag() -> None:
    assert parse_args(["--log-format", "json"]).log_format == "json"
    assert parse_args([]).log_format == "text"
    with pytest.raises(SystemExit):
        parse_args(["--log-format", "xml"])


def _worker_env(**worker: Any) -> dict[str, Any]:
    obj = partition(worker={"image": "example/jobs-worker:1.0", **worker})
    kinds, _ = children(obj)
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_worker_pods_log_json_only_when_the_partition_asks() -> None:
    assert LOG_FORMAT_ENV not in _worker_env()  # existing pods keep their template
    assert LOG_FORMAT_ENV not in _worker_env(logFormat="text")
    assert _worker_env(logFormat="json")[LOG_FORMAT_ENV] == "json"
