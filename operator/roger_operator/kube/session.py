"""kopf's HTTP session to the API server, with a bound on requests in flight.

kopf's own session has no bound on connections: N Partitions applied at once become N
concurrent PATCHes (finalizer, progress), each on a TLS connection of its own that stays
pooled afterwards. Each such connection holds a 256 KiB read buffer and OpenSSL's state:
at 100 Partitions 118 connections, 20 MiB of the operator's peak RSS, growing with N
(bench/OPERATOR_RESULTS.md). The login handler here gives kopf the same session (same
credentials, TLS, proxy settings) with one client middleware: at most ``limit``
non-watch requests wait for their response at once; the others queue in the event loop.

Watch requests are never held back, nor counted: a slot is held until a response's
headers arrive, and a watch is a long-lived stream per watched resource (and namespace)
whose answer need not come at once; other requests must never wait behind them.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import kopf

if TYPE_CHECKING:
    from yarl import URL  # aiohttp's URL type

REQUESTS_IN_FLIGHT: Final = 16


def is_watch(url: URL) -> bool:
    """A watch stream: ``?watch=true`` (kopf's) or ``?watch=1``."""
    return str(url.query.get("watch", "")).lower() in ("true", "1")


def bounded_requests(limit: int) -> aiohttp.ClientMiddlewareType:
    """A client middleware: at most ``limit`` non-watch requests in flight at once."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1; got {limit}")
    slots = asyncio.Semaphore(limit)

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if is_watch(request.url):
            return await handler(request)
        async with slots:
            return await handler(request)

    return middleware


def session_for(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """The session kopf would build from ``info``, with the bound middleware."""
    with warnings.catch_warnings():  # as kopf does: its own deprecation note on basic auth
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="kopf")
        auth = info.as_aiohttp_basic_auth()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        auth=auth,
        proxy=info.proxy_url,
        trust_env=info.trust_env,
        middlewares=(bounded_requests(limit),),
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        priority=info.priority,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
    )


def login_handler(
    limit: int = REQUESTS_IN_FLIGHT,
) -> Callable[..., Awaitable[kopf.AiohttpSession | None]]:
    """A ``kopf.on.login`` handler: kopf's ``login_via_client``, then ``session_for``."""

    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        info = kopf.login_via_client(**kwargs)
        return None if info is None else session_for(info, limit)

    return login
