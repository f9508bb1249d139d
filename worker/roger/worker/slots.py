"""Inside a job process: the pipe ends shared by its slot threads, and their watchdog.

A job process runs up to N jobs at once, one per slot thread, yet short jobs should not
pay a thread hand-off each. So the busy slot reads the pipe itself and runs frames back to
back, and when it runs out it waits on the pipe for the next group (``LINGER``) before it
goes idle; a reader thread watches the pipe while every slot is idle, and wakes another
slot only when a frame has waited ``HANDOFF`` seconds (the running slots are busy with
something long) — the way Go's scheduler hands work off a blocked thread. Outcome frames
are buffered and leave in groups of ``FLUSH_EVERY``, when a slot runs out of work, or
within ``FLUSH_AFTER`` otherwise.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

from roger.core import frames

HANDOFF = 0.001  # a queued frame waits at most about this long for a busy slot
FLUSH_AFTER = 0.002  # a buffered outcome never waits longer than this behind a busy slot
LINGER = 0.02  # how long the last busy slot waits on the pipe itself before going idle
FLUSH_EVERY = 8  # outcomes of a burst leave in groups this big, so acks flow steadily


class Results:
    """Frames for the worker, buffered so a burst of outcomes leaves in one write."""

    def __init__(self, wfd: int) -> None:
        self.wfd = wfd
        self.lock = threading.Lock()
        self.parts: list[bytes] = []
        self.since = 0.0  # monotonic time of the oldest buffered frame
        self.flushes = 0  # tells whether a frame added earlier is still buffered

    def add(self, data: bytes) -> tuple[int, int]:
        """Buffer a frame; the token lets ``replace`` swap it while it is still here."""
        with self.lock:
            if not self.parts:
                self.since = time.monotonic()
            self.parts.append(data)
            return self.flushes, len(self.parts) - 1

    def flush_if_many(self) -> None:
        if len(self.parts) >= FLUSH_EVERY:
            self.flush()

    def replace(self, token: tuple[int, int], data: bytes) -> bool:
        """Swap a still-buffered frame for ``data``; False if it has left already."""
        with self.lock:
            if token[0] != self.flushes:
                return False
            self.parts[token[1]] = data
            return True

    def send(self, frame: frames.ToParent) -> None:
        """Buffer and write now (everything buffered before goes first, in order)."""
        self.add(frames.encode(frame))
        self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self.parts:
                return
            data = b"".join(self.parts) if len(self.parts) > 1 else self.parts[0]
            self.parts = []
            self.flushes += 1
            view = memoryview(data)
            while view:
                view = view[os.write(self.wfd, view) :]

    def flush_if_older(self, age: float) -> None:
        if self.parts and time.monotonic() - self.since >= age:
            self.flush()


class Inbox:
    """Frames from the worker, queued for the slot threads.

    The pipe is non-blocking and read under the lock by whoever needs frames: a slot that
    runs out of work reads it directly (no thread hand-off while frames keep coming), and
    the reader thread (``read_forever``) reads it when it turns readable and wakes slots:
    one when work arrives and no slot is active, more when no slot has taken a frame for
    ``HANDOFF`` (the active ones are busy with something long). The reader also sends
    outcomes that have waited ``FLUSH_AFTER``. The worker never has more frames
    outstanding than there are slots, so a frame always finds a free slot.
    """

    def __init__(self, rfd: int, results: Results, slots: int) -> None:
        self.rfd = rfd
        os.set_blocking(rfd, False)
        self.results = results
        self.cond = threading.Condition(threading.Lock())
        self.reader = frames.child_reader()
        self.ready: deque[frames.ToChild] = deque()
        self.active = slots  # slots running a frame or about to take one
        self.waking = 0  # slots notified that have not woken up yet
        self.idle = 0  # slots waiting for work
        self.last_take = 0.0
        self.pipe_waiter = False  # a slot out of work is waiting on the pipe (LINGER)
        self.closed = False

    def _drain(self) -> None:
        """Read what the pipe holds (lock held); EOF marks the inbox closed."""
        while not self.closed:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                self.closed = True
                self.cond.notify_all()
                return
            self.ready.extend(self.reader.feed(data))

    def _pop(self) -> frames.ToChild | None:
        """The next frame (lock held), reading the pipe if nothing is queued."""
        if not self.ready:
            self._drain()
        if self.ready:
            self.last_take = time.monotonic()
            return self.ready.popleft()
        return None

    def take(self) -> frames.ToChild | None:
        """The next frame for a slot, or None once the worker closed the pipe.

        The last active slot to run out of work waits on the pipe itself for ``LINGER``
        (the next group usually comes sooner) before it goes idle: no thread hop per group.
        """
        with self.cond:
            frame = self._pop()
            linger = frame is None and self.active == 1 and not self.pipe_waiter
            if linger:
                self.pipe_waiter = True
            elif frame is None:
                self.active -= 1
        if frame is not None:
            self.results.flush_if_many()
            return frame
        self.results.flush()  # out of work: the worker may be waiting for these
        if linger:
            select.select([self.rfd], [], [], LINGER)
            with self.cond:
                self.pipe_waiter = False
                frame = self._pop()
                if frame is None:
                    self.active -= 1
            if frame is not None:
                return frame
        with self.cond:
            while True:
                frame = self._pop()
                if frame is not None:
                    self.active += 1
                    return frame
                if self.closed:
                    return None
                self.idle += 1
                self.cond.wait()
                self.idle -= 1
                self.waking = max(0, self.waking - 1)

    def read_forever(self) -> None:
        """The reader thread: returns when the worker closes the pipe.

        While some slot is active it only looks in every ``HANDOFF`` (active slots read
        the pipe themselves); when all are idle it waits for the pipe.
        """
        while not self.closed:
            with self.cond:
                watching = self.active + self.waking > 0
            if watching:
                time.sleep(HANDOFF)
            else:
                select.select([self.rfd], [], [], FLUSH_AFTER if self.results.parts else None)
            with self.cond:
                # A slot lingering on the pipe reads it for itself; frames already queued
                # still get slots woken for them.
                if not self.pipe_waiter and (
                    not watching or time.monotonic() - self.last_take >= HANDOFF
                ):
                    self._drain()
                self._wake_slots()
            self.results.flush_if_older(FLUSH_AFTER)

    def _wake_slots(self) -> None:
        """Called with the lock held."""
        if not self.ready or self.idle <= self.waking:
            return
        if self.active + self.waking == 0:
            wake = 1
        elif time.monotonic() - self.last_take >= HANDOFF:
            wake = min(len(self.ready), self.idle - self.waking)
        else:
            return
        self.waking += wake
        self.cond.notify(wake)


class Slot:
    """What one slot thread is doing, for the watchdog: (key, phase, callback, deadline)."""

    __slots__ = ("watch",)

    def __init__(self) -> None:
        self.watch: tuple[int, str, str, float] | None = None


class Watchdog:
    """Reports a job or hook past its deadline; the worker then kills the process."""

    def __init__(
        self, slots: list[Slot], results: Results, interval: float, on_dead_pipe: Callable[[], None]
    ) -> None:
        self.slots, self.results, self.interval = slots, results, interval
        self.on_dead_pipe = on_dead_pipe
        self.reported: set[tuple[int, str, str, float]] = set()

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                now = time.monotonic()
                for slot in self.slots:
                    w = slot.watch
                    if w is not None and w not in self.reported and now > w[3]:
                        self.reported.add(w)
                        self.results.send(frames.Late(w[0], w[1], w[2]))
            except OSError:
                self.on_dead_pipe()
