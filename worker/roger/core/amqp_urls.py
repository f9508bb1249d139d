"""Several broker addresses in one setting: the worker and the client fail over between them.

``--amqp-url`` / ``ROGER_AMQP_URL`` (and the operator's Secret) hold one string, so a cluster
is written in it in either of two ways, which may be mixed:

- comma-separated URLs: ``amqp://u:p@node1:5672/%2F,amqp://u:p@node2:5672/%2F``
- several hosts in one URL: ``amqp://u:p@node1:5672,node2:5672,node3/%2F?heartbeat=30``
  (each host gets the URL's credentials, vhost and query).

A piece after a comma that starts with ``amqp://`` or ``amqps://`` begins a new URL; any
other piece is one more host of the URL before it. The result keeps the order given: it is
the order in which connections are tried. Errors never repeat a password.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

SCHEMES = ("amqp", "amqps")
_SCHEME_RE = re.compile(r"^(amqps?)://", re.IGNORECASE)
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(:[0-9]*)?$")


class AmqpUrlError(ValueError):
    """A broker address setting that cannot be used; the message says what to fix."""


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    return re.sub(r"(://[^/@?#]*?:)[^/@?#]*@", r"\1***@", url)


def parse_amqp_urls(text: str) -> tuple[str, ...]:
    """One ``amqp://`` URL per broker address, in the order given (see the module docstring)."""
    pieces = [p.strip() for p in text.split(",")]
    if not any(pieces):
        raise AmqpUrlError("no broker address given (expected amqp://user:pass@host:port/vhost)")
    groups: list[list[str]] = []
    for piece in pieces:
        if _SCHEME_RE.match(piece):
            groups.append([piece])
        elif not groups:
            raise AmqpUrlError(
                f"broker address {redact(piece)!r} must start with amqp:// or amqps://"
            )
        else:
            groups[-1].append(piece)
    urls: list[str] = []
    for group in groups:
        for url in _expand(",".join(group)):
            if url in urls:
                raise AmqpUrlError(f"broker address {redact(url)} is given twice")
            urls.append(url)
    return tuple(urls)


def _expand(url: str) -> list[str]:
    """One URL, possibly naming several hosts, as one URL per host."""
    scheme_match = _SCHEME_RE.match(url)
    assert scheme_match is not None  # groups start with a scheme
    scheme = scheme_match.group(1).lower()
    rest = url[scheme_match.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    netloc, tail = (rest, "") if cut < 0 else (rest[:cut], rest[cut:])
    userinfo, at, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    out: list[str] = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise AmqpUrlError(f"broker address {redact(url)} has an empty host")
        if not _HOST_RE.match(host):
            raise AmqpUrlError(
                f"broker address {redact(url)}: {host!r} is not a host[:port]"
                " (write a comma inside a password as %2C)"
            )
        one = prefix + host + tail
        _check(urlsplit(one), one)
        out.append(one)
    return out


def _check(parts: SplitResult, url: str) -> None:
    try:
        port = parts.port
    except ValueError:
        raise AmqpUrlError(f"broker address {redact(url)} has a port outside 1-65535") from None
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise AmqpUrlError(f"broker address {redact(url)} has a port outside 1-65535")
    if parts.fragment:
        raise AmqpUrlError(f"broker address {redact(url)} has a #fragment; remove it")
    if parts.path.count("/") > 1:
        raise AmqpUrlError(
            f"broker address {redact(url)}: the vhost is one path segment (write '/' as %2F)"
        )
