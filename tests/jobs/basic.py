"""Jobs that record what happened to them in a file given by their args."""

from __future__ import annotations

import os
import time
from typing import Any

import roger


def _record(args: dict[str, Any], what: str) -> None:
    path = args.get("out")
    if path:
        tag = os.environ.get("ROGER_TEST_TAG") or "-"
        line = f"{what} {args.get('n', '-')} {os.getpid()} {tag}"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{line} {time.time():.6f}\n")


@roger.job
def noop(args: Any) -> None:
    return None


@roger.job
def ok(args: dict[str, Any]) -> str:
    time.sleep(args.get("sleep", 0))
    _record(args, "ok")
    return "fine"


@roger.job(retryable=True)
def flaky(args: dict[str, Any]) -> None:
    _record(args, "fail")
    raise ValueError(f"boom {args.get('n', '')}")


@roger.job
def fails_once_not_retryable(args: dict[str, Any]) -> None:
    _record(args, "fail")
    raise KeyError("nope")


@roger.job(max_execution_time=1)
def stuck(args: dict[str, Any]) -> None:
    _record(args, "start")
    time.sleep(3600)


@roger.job(retryable=True)
def crash(args: dict[str, Any]) -> None:
    _record(args, "start")
    os._exit(7)


@roger.job
def slow(args: dict[str, Any]) -> None:
    _record(args, "start")
    time.sleep(args.get("sleep", 1))
    _record(args, "end")


@roger.job(retryable=True)
def account(args: dict[str, Any]) -> None:
    """ok: succeeds; flaky: fails the first time only; fail: always fails."""
    _record(args, "start")
    time.sleep(args.get("sleep", 0))
    if args["kind"] == "fail":
        raise ValueError("always")
    if args["kind"] == "flaky" and not os.path.exists(args["marker"]):
        open(args["marker"], "w").close()
        raise ValueError("first time")
    _record(args, "end")
