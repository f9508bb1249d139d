"""The operator's HTTP session for kopf (roger_operator.kube.session), against a real HTTP
server on loopback: requests in flight are bounded, watches never are, and the session
carries the credentials ``kube.credentials`` found (read again at each login)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
from aiohttp import web
from yarl import URL

from roger_operator.kube import session
from roger_operator.kube.credentials import Credentials, LoginError

pytestmark = pytest.mark.unit


class Server:
    """Counts the requests it is answering at once; watches wait for ``release``."""

    def __init__(self) -> None:
        self.in_flight = self.most = 0
        self.watching = 0
        self.release = asyncio.Event()
        self.headers: list[dict[str, str]] = []

    async def slow(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        return web.json_response({"kind": "Status"})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """Not even the headers until ``release``: the bound must not wait for them."""
        self.watching += 1
        await self.release.wait()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type": "ADDED"}\n')
        return response


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    app = web.Application()
    app.router.add_get("/slow", server.slow)
    app.router.add_get("/things", server.watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.release.set()
        await runner.cleanup()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


@pytest.mark.parametrize(
    ("url", "watch"),
    [
        ("/api/v1/pods?watch=true", True),
        ("/api/v1/pods?watch=1&resourceVersion=5", True),
        ("/api/v1/pods?watch=True", True),
        ("/api/v1/pods", False),
        ("/api/v1/pods?watch=false", False),
        ("/api/v1/watchers", False),
    ],
)
def test_watch_requests_are_told_apart_by_their_query(url: str, watch: bool) -> None:
    assert session.is_watch(URL(url)) is watch


def test_at_most_limit_requests_are_in_flight_at_once() -> None:
    async def test() -> None:
        async with serving() as (server, base):
            middleware = session.bounded_requests(4)
            async with aiohttp.ClientSession(middlewares=(middleware,)) as http:

                async def get() -> Any:
                    async with http.get(base + "/slow") as r:
                        return await r.json()

                answers = await asyncio.gather(*(get() for _ in range(40)))
            assert answers == [{"kind": "Status"}] * 40  # every one answered
            assert server.most == 4

    run(test)


def test_watches_never_take_a_slot() -> None:
    """More open watches than the bound: other requests still go through."""

    async def test() -> None:
        async with serving() as (server, base):
            middleware = session.bounded_requests(2)
            async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
                watches = [
                    asyncio.create_task(http.get(base + "/things?watch=true")) for _ in range(5)
                ]
                while server.watching < 5:
                    await asyncio.sleep(0.01)
                async with asyncio.timeout(5), http.get(base + "/slow") as r:
                    assert r.status == 200
                server.release.set()
                for response in await asyncio.gather(*watches):
                    assert await response.read() == b'{"type": "ADDED"}\n'
                    response.release()

    run(test)


def test_the_session_carries_what_the_login_found() -> None:
    async def test() -> None:
        async with serving() as (server, base):
            login = Credentials(server=base, static_token="s3cret", default_namespace="ns")
            ctx = session.session_for(login, 3, trust_env=False)
            assert (ctx.server, ctx.default_namespace) == (base, "ns")
            async with ctx.aiohttp_session as http, http.get(base + "/slow") as r:
                assert r.status == 200
            assert server.headers[0]["Authorization"] == "Bearer s3cret"

    run(test)


def test_each_login_reads_the_token_file_again(tmp_path: Path) -> None:
    """kopf logs in again after a 401: a rotated service account token is then used."""
    token = tmp_path / "token"
    login = Credentials(server="https://127.0.0.1:1", token_file=str(token))
    handler = session.login_handler(load=lambda: login)
    settings = kopf.OperatorSettings()

    async def test() -> None:
        for value in ("first", "rotated"):
            token.write_text(value + "\n")
            ctx = await handler(settings=settings, logger=None)
            async with ctx.aiohttp_session as http:
                assert http.headers["Authorization"] == f"Bearer {value}"

    run(test)


def test_no_credentials_is_kopfs_login_error() -> None:
    def nothing() -> Credentials:
        raise LoginError("no Kubernetes credentials: not in a Pod")

    handler = session.login_handler(load=nothing)
    with pytest.raises(kopf.LoginError, match="no Kubernetes credentials"):
        run(lambda: handler(settings=kopf.OperatorSettings()))


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        session.bounded_requests(0)
