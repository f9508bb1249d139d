"""Queue keys seen from a worker: freeing a job's key when the job leaves the partition.

A queue key makes ``enqueue`` refuse a second job while one with the same key is queued or
running (the client takes the key: see ``roger.broker.state_client.take_queue_key``). The
worker frees it when the job leaves (succeeded, buried, cancelled, parked for good), but
only if the key's token still names that job: a redelivered job that already left must not
free the key of a newer one.

Reading the token takes it out of the key queue, where ``x-max-length`` no longer counts
it: a take at that moment would be confirmed (two holders). So the release holds the key's
lock (``<p>.qkey.<digest>.lock``, an exclusive queue every reader and writer of the token
declares first), and, because an exclusive queue does not exclude its own connection, at
most one release per key runs at a time in this process. A release waits for the lock far
longer than a client (``QUEUE_KEY_RELEASE_PATIENCE``): the lock may be held by a client
whose host vanished, and a key not freed stays held for days. For the same reason a release
the connection cut short runs again on the next connection (the job was settled already).
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass

from roger.broker.channels import Confirm, Got, OneShot
from roger.broker.flow import Flow, Refused, Resume, Step, run
from roger.broker.state.session import Session, noop
from roger.core import naming
from roger.core import state as st

log = logging.getLogger("roger.state")
NODE_DOWN_RETRY = 2.0  # seconds between releases of a key whose queue's node is down


class _LocalLocks:
    """One holder per key inside this process; others queue (answered in order)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Resume]] = {}

    def acquired(self, key: str) -> Step:
        def step(resume: Resume) -> None:
            queue = self._queues.get(key)
            if queue is None:
                self._queues[key] = deque()
                resume(None)
            else:
                queue.append(resume)

        return step

    def release(self, key: str) -> None:
        queue = self._queues.get(key)
        if queue is None:
            return
        if queue:
            queue.popleft()(None)
        else:
            del self._queues[key]


@dataclass(slots=True)
class _Unfinished:
    """A release asked for and not yet answered, and the connection it last ran on."""

    done: Confirm
    generation: int


class QueueKeys:
    def __init__(self, session: Session) -> None:
        self.s = session
        self._local = _LocalLocks()
        self._unfinished: dict[tuple[str, str], _Unfinished] = {}

    def reset(self) -> None:
        """The connection is gone: flows waiting on it are never resumed."""
        self._local = _LocalLocks()

    def start(self, gen: int) -> None:
        """A new connection: run again the releases the lost one left unfinished.

        The job was settled already, so nothing else would ever free its key: it would
        stay held for ``QUEUE_KEY_MAX_HOLD``. Running one again is safe: it frees the key
        only while the token still names the job."""
        for (key, job_id), unfinished in list(self._unfinished.items()):
            if unfinished.generation != gen:
                log.info("queue key %r: freeing it again on the new connection", key)
                self._attempt(key, job_id, gen)

    def release(self, key: str, job_id: str, done: Confirm = noop) -> None:
        """Free ``key`` if its token belongs to ``job_id``, then delete the empty key
        queue; ``done(True)`` if the key is not held by anyone else afterwards.

        If the connection goes first, the release runs again on the next one (``start``)
        and ``done`` is answered then."""
        self._unfinished[(key, job_id)] = _Unfinished(done, self.s.generation)
        self._attempt(key, job_id, self.s.generation)

    def _attempt(self, key: str, job_id: str, gen: int) -> None:
        unfinished = self._unfinished[(key, job_id)]
        unfinished.generation = gen

        def answered(freed: bool | None) -> None:
            if freed is None:  # the connection went: the next one runs it again
                return
            if self._unfinished.get((key, job_id)) is unfinished:
                del self._unfinished[(key, job_id)]
            unfinished.done(freed)

        run(self._release(key, job_id), answered)

    def _release(self, key: str, job_id: str) -> Flow[bool | None]:
        """True: the key is free; False: held by another job, or given up (logged); None:
        the connection went before an answer.

        The key queue is a classic queue on one node: while that node is down or its queue
        recovers, the broker refuses it (``_node_trouble``), and the release is tried again
        until ``QUEUE_KEY_RELEASE_PATIENCE`` (a node restarts in seconds to a minute). Each
        try frees the key only if its token still names the job."""
        local = self._local
        started, warned = time.monotonic(), False
        yield local.acquired(key)
        try:
            while True:
                try:
                    ch = yield from self._locked(key)
                except Refused:
                    return None
                if ch is None:
                    return False
                try:
                    return bool((yield from self._free_if_ours(ch, key, job_id)))
                except Refused as refused:
                    if refused.code == 0:
                        return None
                    yield from self._unlock_on_fresh_channel(key)
                    if (
                        not _node_trouble(refused)
                        or _since(started) > st.QUEUE_KEY_RELEASE_PATIENCE
                    ):
                        log.warning("releasing queue key %r refused (%s)", key, refused)
                        return False
                    if not warned:
                        warned = True
                        log.warning(
                            "queue key %r: its node is down (%s); trying again", key, refused
                        )
                finally:
                    ch.finish()
                yield self.s.slept(NODE_DOWN_RETRY)
        finally:
            local.release(key)

    def _locked(self, key: str) -> Flow[OneShot | None]:
        """A channel on which this connection holds the key's lock (None: gave up;
        ``Refused``: the connection is gone).

        Busy: retried with a short random backoff (up to 0.1 s) for ``QUEUE_KEY_LOCK_WAIT``,
        then up to 1 s until ``QUEUE_KEY_RELEASE_PATIENCE``: a key not freed stays held for
        days, and a lock held by a vanished client is freed only once the broker notices."""
        lock = naming.queue_key_lock_name(self.s.partition, key)
        started = time.monotonic()
        pause, cap, warned = 0.005, 0.1, False
        while True:
            try:
                ch: OneShot = yield self.s.one_shots.opened()
                yield ch.declare(lock, exclusive=True, auto_delete=False)
                if warned:
                    log.info(
                        "queue key %r: its lock was free again after %.0fs", key, _since(started)
                    )
                return ch
            except Refused as refused:
                if refused.code == 0:  # the connection is gone
                    raise
                if refused.code != 405:  # not RESOURCE_LOCKED (held by someone else)
                    log.error("queue key %r: its lock was refused (%s); not released", key, refused)
                    return None
            waited = _since(started)
            if waited > st.QUEUE_KEY_RELEASE_PATIENCE:
                log.error(
                    "queue key %r stayed locked for %.0fs; not released (it frees itself "
                    "after %.0f days; Client.release_queue_key frees it by hand)",
                    key,
                    waited,
                    st.QUEUE_KEY_MAX_HOLD / 86400,
                )
                return None
            if waited > st.QUEUE_KEY_LOCK_WAIT and not warned:
                warned, cap = True, 1.0
                log.warning(
                    "queue key %r locked by another connection for %.0fs; still trying to "
                    "free it (for up to %.0fs)",
                    key,
                    waited,
                    st.QUEUE_KEY_RELEASE_PATIENCE,
                )
            yield self.s.slept(random.uniform(0, pause))
            pause = min(pause * 2, cap)

    def _free_if_ours(self, ch: OneShot, key: str, job_id: str) -> Flow[bool]:
        name = naming.queue_key_queue_name(self.s.partition, key)
        yield ch.declare(name, durable=True, arguments=st.queue_key_arguments())
        got: Got | None = yield ch.get(name)
        ours = got is None or got.props.message_id == job_id
        if got is not None:
            if ours:
                ch.ack(got.tag)
            else:
                ch.nack(got.tag, requeue=True)
        if ours:
            yield ch.delete(name, if_empty=True)
        # answered after the broker has done everything above (same channel, in order)
        yield ch.delete(naming.queue_key_lock_name(self.s.partition, key))
        return ours

    def _unlock_on_fresh_channel(self, key: str) -> Flow[None]:
        """The lock's channel was closed by a refusal: the lock queue itself remains."""
        try:
            ch: OneShot = yield self.s.one_shots.opened()
            try:
                yield ch.delete(naming.queue_key_lock_name(self.s.partition, key))
            finally:
                ch.finish()
        except Refused:
            pass  # the connection is gone, and the lock with it


def _node_trouble(refused: Refused) -> bool:
    """A refusal that passes once the key queue's node is back: 404 ("home node ... is
    down", 3.10; "process is stopped by supervisor", 4.0), and 4.0's 406 "not empty" on the
    delete right after a take while the queue recovers (seen once per node restart)."""
    return refused.code == 404 or (refused.code == 406 and "not empty" in str(refused))


def _since(started: float) -> float:
    return time.monotonic() - started
