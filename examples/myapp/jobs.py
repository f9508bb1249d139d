"""Jobs of every outcome, for trying Roger out (``make demo`` enqueues each of them).

A job is a function of one argument (the JSON args), decorated with ``@roger.job``; its
name is ``"module:function"``, e.g. ``myapp.jobs:send_welcome``. Enqueue from anywhere:

    roger enqueue tenant-a myapp.jobs:send_welcome '{"user": 42}'

or from Python: ``roger.Client(amqp_url).enqueue("tenant-a", send_welcome, {"user": 42})``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import roger


@roger.job
def send_welcome(args: dict[str, Any]) -> str:
    """Succeeds: the usual case."""
    time.sleep(float(args.get("seconds", 0.05)))
    return f"welcome sent to user {args.get('user')}"


@roger.job(queue="email", retryable=True)
def sync_mailbox(args: dict[str, Any]) -> str:
    """Fails until the time ``until`` (epoch seconds) given by the producer, then succeeds:
    retried (after 1 s, 3 s, ... per the Partition's retry levels), not buried."""
    if time.time() < float(args.get("until", 0)):
        raise ConnectionError("mail server busy, try again later")
    return "synced"


@roger.job(retryable=True)
def charge_card(args: dict[str, Any]) -> None:
    """Always fails: retried through every retry level, then buried."""
    raise ValueError(f"card {args.get('card', '****')} declined")


@roger.job
def import_report(args: dict[str, Any]) -> None:
    """Not retryable and fails: buried at once (``on_error`` is not called, ``on_buried`` is)."""
    raise KeyError("column 'total' missing")


@roger.job
def import_invoice(args: dict[str, Any]) -> str:
    """Imports the file ``path`` and writes ``<path>.done``. Not retryable: a file that has
    not arrived yet is buried at once (``FileNotFoundError``); once it is there, replay the
    buried job (``kubectl roger buried replay tenant-a --id ID``, as ``make demo`` does)."""
    path = Path(str(args["path"]))
    lines = path.read_text(encoding="utf-8").splitlines()
    path.with_name(path.name + ".done").write_text(f"{len(lines)} lines imported\n")
    return f"{len(lines)} lines imported"


@roger.job(queue="reports", max_execution_time=2)
def build_report(args: dict[str, Any]) -> str:
    """Takes ``seconds``; more than 2 s is stopped (error kind ``timeout``) and buried.

    Long enough to be cancelled while queued or running:
    ``roger.Client(url).cancel("tenant-a", job_id)``.
    """
    time.sleep(float(args.get("seconds", 30)))
    return "report ready"


@roger.job(retryable=True)
def crunch_numbers(args: dict[str, Any]) -> str:
    """Holds ``mb`` megabytes until the time ``until`` (epoch seconds), then very little:
    past the Pod's memory limit the kernel OOM-kills its job process, and the job is
    retried (``on_error``, kind ``worker_crash``), not lost; once it fits, it succeeds."""
    if time.time() < float(args.get("until", 0)):
        block = bytearray(int(args.get("mb", 512)) * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not virtual
        time.sleep(1)
    return "numbers crunched"
