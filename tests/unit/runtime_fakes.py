"""Fakes at the worker's I/O edges, for unit tests of its state machine.

``FakeLoop`` runs callbacks on a virtual clock; ``FakeLink`` and ``FakeChannel`` stand for
the AMQP connection (deliveries in, acks, nacks and confirmed publishes out);
``roger.broker.fake_state`` for partition state in RabbitMQ (its answers come on the fake
loop, as the broker's would); ``FakeJobProcess`` for a job process (the test answers with
frames, or kills it). ``Rig`` wires a real ``Worker`` to all of them. The same
behaviours are proven on the real broker and real processes by the integration tests:
these add reach (exact interleavings) and speed.
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pika

from roger.broker.fake_state import FakePartitionState, FakeStateBroker
from roger.core import frames
from roger.core.config import WorkerConfig
from roger.core.jobs import JobRegistry
from roger.worker.edges import Edges
from roger.worker.runtime import Worker
from tests.jobs import basic


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cancelled: set[int] = set()
        self.stopped = False

    def call_later(self, delay: float, fn: Callable[[], None]) -> int:
        seq = next(self._seq)
        heapq.heappush(self._timers, (self.now + delay, seq, fn))
        return seq

    def remove_timeout(self, handle: int) -> None:
        self._cancelled.add(handle)

    def add_callback_threadsafe(self, fn: Callable[[], None]) -> None:
        self.call_later(0, fn)

    def add_handler(self, *_: Any) -> None:
        pass

    def remove_handler(self, *_: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def run(self, seconds: float = 0.0) -> None:
        """Run every callback due within ``seconds`` from now (and what they schedule)."""
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, seq, fn = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if seq not in self._cancelled:
                fn()
        self.now = until


class FakeChannel:
    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.is_open = True
        self.acks: list[tuple[int, bool]] = []
        self.nacks: list[int] = []
        self.consumer: Callable[..., None] | None = None
        self._tags = itertools.count(1)

    def basic_consume(self, queue: str, on_message: Callable[..., None], auto_ack: bool) -> str:
        assert queue == self.queue and not auto_ack
        self.consumer = on_message
        return f"ctag-{queue}"

    def basic_cancel(self, _tag: str) -> None:
        self.consumer = None

    def basic_ack(self, tag: int, multiple: bool) -> None:
        assert self.is_open, "ack on a closed channel"
        self.acks.append((tag, multiple))

    def basic_nack(self, tag: int, requeue: bool) -> None:
        assert self.is_open and requeue
        self.nacks.append(tag)

    def deliver(self, body: bytes, **props: Any) -> int:
        assert self.consumer is not None, f"nobody consumes {self.queue}"
        tag = next(self._tags)
        method = SimpleNamespace(delivery_tag=tag)
        self.consumer(self, method, pika.BasicProperties(**props), body)
        return tag

    def acked(self) -> set[int]:
        """Every tag acknowledged so far (``multiple`` acks expanded)."""
        out: set[int] = set()
        for tag, multiple in self.acks:
            out |= set(range(1, tag + 1)) if multiple else {tag}
        return out


@dataclass
class Publish:
    routing_key: str
    body: bytes
    props: Any
    on_confirm: Callable[[bool], None]
    exchange: str = ""


class FakeLink:
    def __init__(
        self,
        url: str,
        ioloop: FakeLoop,
        declarations: list[Any],
        on_ready: Callable[[], None],
        on_lost: Callable[[], None],
        on_fatal: Callable[[str], None],
        name: str = "",
        keep_existing: Any = (),
        exchanges: list[str] | None = None,
        bindings: list[Any] | None = None,
    ) -> None:
        self.ioloop = ioloop
        self.on_ready, self.on_lost, self.on_fatal = on_ready, on_lost, on_fatal
        self.ready = False
        self.generation = 0
        self.conn: Any = None
        self.channels: dict[str, FakeChannel] = {}
        self.unconfirmed_publishes: list[Publish] = []
        self.closed = False
        # ``.buried`` queues as the worker sees them before a burial: (props, body) each
        self.buried: dict[str, list[tuple[Any, bytes]]] = {}
        self.on_ack_timeout: Callable[[str, Any, float | None], None] | None = None

    def connect(self) -> None:
        pass

    def up(self) -> None:
        self.ready, self.generation = True, self.generation + 1
        self.conn = SimpleNamespace(is_open=True, ioloop=self.ioloop)
        self.on_ready()

    def drop(self) -> None:
        """The connection is gone: every channel with it."""
        self.ready = False
        for ch in self.channels.values():
            ch.is_open = False
        self.channels = {}
        self.unconfirmed_publishes.clear()
        self.on_lost()

    def time_out(self, queue: str, timeout: float | None) -> None:
        """The broker closes ``queue``'s consumer channel for its consumer timeout: every
        delivery of that channel is back in the queue; the connection stays."""
        ch = self.channels.pop(queue)
        ch.is_open = False
        assert self.on_ack_timeout is not None
        self.on_ack_timeout(queue, ch, timeout)

    def consume(self, queue: str, prefetch: int, on_channel: Callable[[Any], None]) -> None:
        ch = self.channels[queue] = FakeChannel(queue)
        on_channel(ch)

    def publish(
        self, routing_key: str, body: bytes, props: Any, on_confirm: Any, exchange: str = ""
    ) -> bool:
        self.unconfirmed_publishes.append(Publish(routing_key, body, props, on_confirm, exchange))
        return True

    def confirm_all(self, ok: bool = True) -> list[Publish]:
        """Confirm every publish so far; one into a queue held in ``buried`` lands there."""
        done, self.unconfirmed_publishes = self.unconfirmed_publishes, []
        for p in done:
            if ok and p.routing_key in self.buried:
                self.buried[p.routing_key].append((p.props, p.body))
            p.on_confirm(ok)
        return done

    def unconfirmed(self) -> int:
        return len(self.unconfirmed_publishes)

    def close(self) -> None:
        self.closed = True
        self.ioloop.stop()

    def sample(self, *_: Any) -> None:
        pass

    def count(self, queue: str, on_count: Callable[[int | None], None]) -> None:
        on_count(len(self.buried.get(queue, [])))

    def take_head(self, queue: str, on_taken: Callable[[Any, bytes | None], None]) -> None:
        held = self.buried.get(queue, [])
        on_taken(*(held.pop(0) if held else (None, None)))


class FakeJobProcess:
    """A job process the test speaks for: it receives frames and answers with frames."""

    pids = itertools.count(1000)

    def __init__(
        self,
        queue: str,
        slots: int,
        spec: str,
        ioloop: FakeLoop,
        on_frames: Callable[[Any, list[frames.ToParent]], None],
        on_exit: Callable[[Any], None],
    ) -> None:
        self.queue, self.slots = queue, slots
        self.on_frames, self.on_exit = on_frames, on_exit
        self.pid = next(self.pids)
        self.ready = False
        self.alive = True
        self.cause: str | None = None
        self.cause_key: int | None = None
        self.tasks: dict[int, Any] = {}
        self.unsent: list[bytes] = []
        self.quarantine = False
        self.received: list[frames.ToChild] = []
        self.backlog_since = 0.0
        self.started_at = 0.0
        self._reader = frames.child_reader()
        self.code: int | None = None

    @property
    def free(self) -> int:
        return self.slots - len(self.tasks) if self.alive and self.ready else 0

    def queue_frame(self, data: bytes) -> None:
        self.unsent.append(data)

    def flush(self) -> bool:
        data, self.unsent = b"".join(self.unsent), []
        if not self.alive:
            return False
        self.received += self._reader.feed(data)
        return True

    def kill(self, cause: str, key: int | None = None) -> None:
        if self.alive:
            self.alive, self.cause, self.cause_key, self.code = False, cause, key, -9
            self.on_exit(self)

    def close(self) -> None:
        self.alive = False

    def exit_code(self) -> int | None:
        return self.code

    # -- the test speaks for the process ---------------------------------------------
    def say(self, *batch: frames.ToParent) -> None:
        self.on_frames(self, list(batch))

    def die(self, code: int = 1) -> None:
        """Exit on its own (a crash: no cause)."""
        if self.alive:
            self.alive, self.code = False, code
            self.on_exit(self)

    def runs(self) -> list[frames.Run]:
        return [f for f in self.received if isinstance(f, frames.Run)]

    def hook_runs(self) -> list[frames.RunHooks]:
        return [f for f in self.received if isinstance(f, frames.RunHooks)]

    def key_of(self, job_id: str) -> int:
        """The key of the job's current run here."""
        return next(
            k for k, t in self.tasks.items() if getattr(t, "msg", None) and t.msg.id == job_id
        )


@dataclass
class Rig:
    """A real ``Worker`` on fakes. ``up()`` connects, catches up and starts consuming."""

    queues: dict[str, int] = field(default_factory=lambda: {"default": 3})
    job_processes: int = 1
    callbacks: tuple[Any, ...] = ()
    retry_levels: tuple[int, ...] = (1, 2)
    loop: FakeLoop = field(default_factory=FakeLoop)
    held_answers: list[Callable[[], None]] | None = None  # a list: partition state is slow

    def __post_init__(self) -> None:
        config = WorkerConfig(
            partition="p",
            queues=self.queues,
            jobs=("tests.jobs.basic",),
            callbacks=self.callbacks,
            retry_levels=self.retry_levels,
            job_processes=self.job_processes,
            shutdown_timeout=5.0,
        )
        self.processes: list[FakeJobProcess] = []

        def spawn(*args: Any) -> FakeJobProcess:
            proc = FakeJobProcess(*args)
            self.processes.append(proc)
            return proc

        self.partition = FakeStateBroker("p")  # what other replicas and clients see
        self.states: list[FakePartitionState] = []

        def make_state(*args: Any, **kwargs: Any) -> FakePartitionState:
            state = FakePartitionState(*args, broker=self.partition, defer=self.defer, **kwargs)
            self.states.append(state)
            return state

        edges = Edges(
            ioloop=lambda: self.loop,
            link=FakeLink,
            partition_state=make_state,
            job_process=spawn,
        )
        self.worker = Worker(config, "amqp://fake", JobRegistry([basic]), edges=edges)
        self.worker.run()  # the fake loop returns at once: start-up callbacks are queued

    def defer(self, answer: Callable[[], None]) -> None:
        """Partition state answers on the next loop turn, or later while ``held``."""
        if self.held_answers is not None:
            self.held_answers.append(answer)
        else:
            self.loop.call_later(0, answer)

    def release_answers(self) -> None:
        answers, self.held_answers = self.held_answers or [], None
        for answer in answers:
            self.loop.call_later(0, answer)
        self.loop.run()

    @property
    def link(self) -> FakeLink:
        link = self.worker.link
        assert isinstance(link, FakeLink)
        return link

    @property
    def state(self) -> FakePartitionState:
        return self.states[0]

    def up(self) -> None:
        self.ready()
        self.link.up()
        self.loop.run()

    def ready(self) -> None:
        """Every live job process not ready yet says Ready (a replacement, say)."""
        for proc in self.alive():
            if not proc.ready:
                proc.say(frames.Ready(proc.pid, proc.slots))
        self.loop.run()

    def alive(self) -> list[FakeJobProcess]:
        return [p for p in self.processes if p.alive]

    def channel(self, queue: str = "default") -> FakeChannel:
        return self.link.channels[f"p-{queue}"]

    def enqueue(self, job_id: str, name: str = "tests.jobs.basic:ok", **fields: Any) -> int:
        body = {"id": job_id, "name": name, "args": {}, "queue": "default", **fields}
        tag = self.channel(str(body["queue"])).deliver(json.dumps(body).encode())
        self.loop.run()
        return tag

    def requeued(self, queue: str = "default") -> list[str]:
        """Ids of the fresh copies put back into ``queue`` (not yet confirmed)."""
        return [
            json.loads(p.body)["id"]
            for p in self.link.unconfirmed_publishes
            if p.routing_key == f"p-{queue}"
        ]

    def process_of(self, job_id: str) -> FakeJobProcess:
        return next(p for p in self.alive() if any(t.msg.id == job_id for t in _jobs(p)))

    def succeed(self, job_id: str) -> None:
        proc = self.process_of(job_id)
        proc.say(frames.OkDone(proc.key_of(job_id), 0.01, 1.0))
        self.loop.run()

    def fail(self, job_id: str, error: tuple[str, str] = ("ValueError", "boom")) -> None:
        proc = self.process_of(job_id)
        key = proc.key_of(job_id)
        proc.say(frames.Outcome(key, 0.01, 1.0, error, "Traceback"), frames.Done(key))
        self.loop.run()


def _jobs(proc: FakeJobProcess) -> list[Any]:
    return [t for t in proc.tasks.values() if hasattr(t, "msg")]
