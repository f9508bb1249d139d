"""What every ``roger`` command shares: exit codes, usage errors, the broker URL."""

from __future__ import annotations

import argparse
import os
from typing import NoReturn

from roger.core.amqp_urls import AmqpUrlError, parse_amqp_urls

EXIT_USAGE = 2
EXIT_DUPLICATE = 3  # enqueue: the job's queue_key is held by another job


class UsageError(Exception):
    """Bad input from the command line or the config file."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"roger: {message}\n")


def amqp_url(opts: argparse.Namespace) -> str:
    url = opts.amqp_url or os.environ.get("ROGER_AMQP_URL")
    if not url:
        raise UsageError("no broker: pass --amqp-url or set ROGER_AMQP_URL")
    try:
        parse_amqp_urls(str(url))  # several addresses are allowed; refuse a malformed list here
    except AmqpUrlError as exc:
        raise UsageError(str(exc)) from None
    return str(url)
