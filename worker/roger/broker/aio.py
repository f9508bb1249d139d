"""``roger.AsyncClient``: the client for asyncio applications (FastAPI, aiohttp).

No new dependency: it drives the same enqueue steps as ``roger.Client`` over the same I/O
thread: a step's batch of publishes wakes the loop once (``call_soon_threadsafe``) when
its last confirm arrives, so the event loop never blocks on the broker and every await
returns only once the broker confirmed its own message. An asyncio AMQP library
(aio-pika, aiormq) would be a second AMQP stack with its own connection handling and
fork and reconnect rules to keep equal; here both APIs share one. Calls on the blocking
connection (cancel, pause, info, ...) run in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from roger.broker import enqueue_flow as flow
from roger.broker.client import Client, PartitionInfo
from roger.broker.enqueue_flow import EnqueueResult, JobSpec
from roger.core.jobs import JobDefinition

T = TypeVar("T")


class AsyncClient:
    """Awaitable enqueue and partition calls; share one per process (or per loop)."""

    def __init__(self, amqp_url: str, name: str | None = None) -> None:
        self.sync = Client(amqp_url, name)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._in_thread(self.sync.close)

    async def _run(self, steps: flow.Steps) -> list[tuple[EnqueueResult, BaseException | None]]:
        links, loop = self.sync._links, asyncio.get_running_loop()
        outcomes: list[Any] | None = None
        try:
            while True:
                actions = steps.send(outcomes)  # type: ignore[arg-type]
                settled = loop.create_future()

                def wake(f: asyncio.Future[None] = settled) -> None:
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(_finish, f)

                # starting may connect (blocking): only then off the loop
                started = (
                    links.dispatch(actions, wake)
                    if links.connected()
                    else await self._in_thread(links.dispatch, actions, wake)
                )
                await settled
                if started.controls:
                    await asyncio.wait([asyncio.wrap_future(f) for f in started.controls])
                outcomes = started.outcomes()
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def enqueue(
        self,
        partition: str,
        job: JobDefinition | str,
        args: Any = None,
        *,
        queue: str | None = None,
        id: str | None = None,
        delay: float | None = None,
        at: datetime.datetime | None = None,
        queue_key: str | None = None,
    ) -> str:
        """As ``Client.enqueue``: returns the id once the broker confirmed the job."""
        [(result, exc)] = await self._run(
            flow.steps([flow.prepare_one(partition, job, args, queue, id, delay, at, queue_key)])
        )
        if exc is not None:
            raise exc
        return result.job_id

    async def enqueue_many(self, partition: str, jobs: Iterable[JobSpec]) -> list[EnqueueResult]:
        """As ``Client.enqueue_many``: one pipeline, one result per job."""
        prepared = flow.prepare_many(partition, jobs)
        return [r for r, _ in await self._run(flow.steps(prepared))] if prepared else []

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))

    async def cancel(self, partition: str, job_id: str) -> None:
        await self._in_thread(self.sync.cancel, partition, job_id)

    async def pause(self, partition: str, queue: str) -> None:
        await self._in_thread(self.sync.pause, partition, queue)

    async def resume(self, partition: str, queue: str) -> None:
        await self._in_thread(self.sync.resume, partition, queue)

    async def release_queue_key(self, partition: str, queue_key: str) -> bool:
        return await self._in_thread(self.sync.release_queue_key, partition, queue_key)

    async def queue_key_holder(self, partition: str, queue_key: str) -> str | None:
        return await self._in_thread(self.sync.queue_key_holder, partition, queue_key)

    async def info(
        self,
        partition: str,
        queues: tuple[str, ...] | None = None,
        retry_levels: tuple[int, ...] | None = None,
    ) -> PartitionInfo:
        return await self._in_thread(self.sync.info, partition, queues, retry_levels)


def _finish(settled: asyncio.Future[None]) -> None:
    if not settled.done():
        settled.set_result(None)
