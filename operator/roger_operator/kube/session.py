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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import kopf

from roger_operator.kube import credentials
from roger_operator.kube.credentials import Credentials

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


def session_for(login: Credentials, limit: int, *, trust_env: bool) -> kopf.AiohttpSession:
    """kopf's session to the server ``login`` names, with its credentials and the bound."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=login.ssl_context()),
        headers=login.headers(fresh=True),
        proxy=login.proxy_url,
        trust_env=trust_env,
        middlewares=(bounded_requests(limit),),
    )
    return kopf.AiohttpSession(
        aiohttp_session=session, server=login.server, default_namespace=login.default_namespace
    )


def login_handler(
    limit: int = REQUESTS_IN_FLIGHT,
    load: Callable[[], Credentials] = credentials.load,
) -> Callable[..., Awaitable[kopf.AiohttpSession]]:
    """A ``kopf.on.login`` handler: ``kube.credentials``, then ``session_for``.

    kopf calls it again when the API server answers 401; the token file is then read anew.
    """

    async def login(*, settings: kopf.OperatorSettings, **_: Any) -> kopf.AiohttpSession:
        try:
            found = load()
        except credentials.LoginError as exc:
            raise kopf.LoginError(str(exc)) from None
        return session_for(found, limit, trust_env=settings.networking.trust_env)

    return login
