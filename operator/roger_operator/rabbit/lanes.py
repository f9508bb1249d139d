"""One lane of threads per broker, so that a broker that hangs holds only its own lane.

Reconcile handlers run in kopf's thread pool, shared by every Partition. A broker that
accepts connections and never answers (a stuck node, a half-open load balancer) would
hold each calling thread until pika's timeouts fire, and a few such brokers would hold
them all: every other Partition would wait. So broker work runs in a lane of its own per
broker, and the caller waits for it a bounded time:

- a *healthy* lane (its last call ended without an outage) is waited for up to ``wait``
  seconds, long enough for a slow but working broker;
- a lane in *outage* (its last call failed to reach the broker, or a call has run longer
  than ``wait`` while no other call was answered) gets one probe at a time: a caller
  sends a probe only when nothing is in flight and waits ``probe_wait`` for it; while a
  probe runs, callers fail at once with the last error. The first probe that succeeds
  makes the lane healthy again.

A caller that gives up never cancels the call: it finishes in its lane (broker operations
here are idempotent declarations and reads), and the next reconcile sees its effect.

At the stop signal (``shutdown``) calls still queued are dropped and every caller, waiting
or new, fails at once with ``Stopping``: kopf waits for every handler thread before it
exits, and handlers queueing their queues' deletions one by one behind forty others kept a
stopping operator alive for 45 s. The next operator does what they did not (every handler
resumes from what it finds).

Two rules keep a busy lane from looking like a dead broker (at 500 Partitions applied at
once, every reconcile queued behind the others' declarations, timed out, and marked the
lane in outage, so Ready Partitions flapped to ``BrokerUnavailable``):

- an outage needs a call running longer than the wait *and* no call of the lane ending
  (answered) for as long: one slow call (a policy PUT that re-matches every queue, a
  management timeout) while the broker answers the others is a busy broker, not a dead
  one. A caller whose wait ends in a busy lane (its call queued most of the wait, or
  running while others were answered) gets ``LaneBusy`` and leaves the lane healthy;
- a call identical to one still pending (same function, same arguments) is not queued
  again: the caller waits for the pending one. Retries of a waiting reconcile therefore
  never pile copies of the same declarations into the lane.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class LaneUnavailable(Exception):
    """The lane's broker did not answer in time, or is known to be out; safe to show."""


class Stopping(Exception):
    """The operator is stopping: this broker call was not made (the next operator makes it).

    Not a ``LaneUnavailable``: the broker is not at fault, so nothing may report it
    unavailable or give up on it (a finalizer past its broker deadline would otherwise let
    go of queues it never tried to delete)."""

    def __init__(self) -> None:
        super().__init__("the operator is stopping")


class LaneBusy(LaneUnavailable):
    """The wait ended while the lane was busy, not out: the call was queued most of it, or
    other calls of the lane were answered meanwhile. The lane stays healthy. ``pending`` is
    the call, still queued or running: the caller may come back once it is done."""

    def __init__(self, message: str, pending: Future[Any]) -> None:
        super().__init__(message)
        self.pending = pending


@dataclass
class _Lane:
    executor: ThreadPoolExecutor
    pending: int = 0  # calls submitted and not finished (queued or running)
    running: dict[int, float] = field(default_factory=dict)  # call number -> start time
    in_outage: bool = False
    last_error: str = ""
    progress: float = 0.0  # when a call last ended without an outage (or the lane began)
    calls: int = 0
    # identical calls queued or running -> (call number, its future, when it was submitted)
    pending_calls: dict[Hashable, tuple[int, Future[Any], float]] = field(default_factory=dict)


class Lanes:
    """Runs ``fn`` in the lane of ``key`` (one per broker), waiting a bounded time.

    ``is_outage(exc)`` says which errors mean "the broker cannot be reached" (they put the
    lane in outage) as opposed to answers (a refused declaration, a conflict), which pass
    through to the caller and leave the lane healthy.
    """

    def __init__(
        self,
        is_outage: Callable[[BaseException], bool],
        *,
        threads: int = 4,
        wait: float = 15.0,
        probe_wait: float = 1.0,
        on_thread_start: Callable[[], None] | None = None,
        on_call_done: Callable[[str, float, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.is_outage = is_outage
        self.threads = threads
        self.wait = wait
        self.probe_wait = probe_wait
        self.on_thread_start = on_thread_start
        # (the function's name, seconds it queued for a lane thread, seconds it ran)
        self.on_call_done = on_call_done
        self.clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stopped: Future[None] = Future()  # done at ``shutdown``: wakes every waiter

    def _lane(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            executor = ThreadPoolExecutor(
                self.threads, thread_name_prefix="broker-lane", initializer=self.on_thread_start
            )
            lane = self._lanes[key] = _Lane(executor, progress=self.clock())
        return lane

    def call(self, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        same: Hashable = (fn, repr(args), repr(sorted(kwargs.items())))
        with self._lock:
            if self._closed:
                raise Stopping
            lane = self._lane(key)
            now = self.clock()
            oldest = now - min(lane.running.values(), default=now)
            if oldest > self.wait and now - lane.progress > self.wait:
                lane.in_outage = True
                lane.last_error = lane.last_error or "RabbitMQ does not answer"
            if lane.in_outage and lane.pending:
                raise LaneUnavailable(f"{lane.last_error} (an earlier call still waits)")
            budget = self.probe_wait if lane.in_outage else self.wait
            pending = lane.pending_calls.get(same)
            if pending is None:
                lane.calls += 1
                lane.pending += 1
                future = lane.executor.submit(
                    self._run, lane, lane.calls, same, now, fn, args, kwargs
                )
                pending = lane.pending_calls[same] = (lane.calls, future, now)
        number, waited_for, submitted = pending
        try:
            return self._wait(waited_for, budget)  # type: ignore[no-any-return]
        except FutureTimeout:
            with self._lock:
                now = self.clock()
                started = lane.running.get(number, now)
                answering = lane.progress > submitted  # others' calls ended meanwhile
                if not waited_for.done() and (answering or now - started < budget / 2):
                    # Queued most of the wait, or slow while others are answered: busy.
                    raise LaneBusy(
                        f"RabbitMQ is busy: this call waited {budget:.0f}s, mostly behind "
                        f"{lane.pending - 1} other calls to this broker",
                        waited_for,
                    ) from None
                lane.in_outage = True
                lane.last_error = f"RabbitMQ did not answer within {budget:.0f}s"
            raise LaneUnavailable(f"RabbitMQ did not answer within {budget:.0f}s") from None

    def _wait(self, future: Future[T], budget: float) -> T:
        """``future``'s result, or ``Stopping`` as soon as the lanes shut down (a call still
        running goes on in its thread, but nobody waits for it any more)."""
        either: tuple[Future[Any], ...] = (future, self._stopped)
        done, _ = futures_wait(either, budget, FIRST_COMPLETED)
        if future in done and not future.cancelled():  # only ``shutdown`` cancels
            return future.result()
        if done:
            raise Stopping
        raise FutureTimeout

    def _run(
        self,
        lane: _Lane,
        number: int,
        same: Hashable,
        submitted: float,
        fn: Callable[..., T],
        args: Any,
        kwargs: Any,
    ) -> T:
        started = self.clock()
        with self._lock:
            lane.running[number] = started
        outage: BaseException | None = None
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            outage = exc if self.is_outage(exc) else None
            raise
        finally:
            with self._lock:
                lane.running.pop(number, None)
                lane.pending -= 1
                if lane.pending_calls.get(same, (None,))[0] == number:
                    del lane.pending_calls[same]
                lane.in_outage = outage is not None
                ended = self.clock()
                if outage is not None:
                    lane.last_error = str(outage)
                else:
                    lane.progress = ended
            if self.on_call_done is not None:
                name = getattr(fn, "__name__", "call")
                self.on_call_done(name, started - submitted, ended - started)

    def shutdown(self) -> None:
        """Drop what is queued, refuse new calls and wake every caller (``Stopping``); calls
        running finish in their threads."""
        with self._lock:
            self._closed = True
            lanes, self._lanes = list(self._lanes.values()), {}
            if not self._stopped.done():
                self._stopped.set_result(None)
        for lane in lanes:
            lane.executor.shutdown(wait=False, cancel_futures=True)
