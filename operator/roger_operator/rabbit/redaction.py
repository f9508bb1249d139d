"""The AMQP URL is a secret: every message that leaves the operator's RabbitMQ modules
goes through ``redact``."""

from __future__ import annotations

import urllib.parse

from roger.core.amqp_urls import AmqpUrlError, parse_amqp_urls


def addresses(url: str) -> tuple[str, ...]:
    """The broker addresses in the Secret's value: one, or several for a cluster."""
    try:
        return parse_amqp_urls(url)
    except AmqpUrlError:
        return (url,)  # connecting reports what is wrong with it


def redact(text: str, url: str) -> str:
    """``text`` without any address's password (or the URL itself)."""
    out = text.replace(url, "<amqp-url>")
    for one in addresses(url):
        parsed = urllib.parse.urlparse(one)
        for secret in {parsed.password, urllib.parse.unquote(parsed.password or "")}:
            if secret and len(secret) >= 3:
                out = out.replace(secret, "***")
    return out
