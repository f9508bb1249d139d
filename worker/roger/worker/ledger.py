"""Which deliveries may still be acknowledged, and on which channel.

A consumer channel's life is an ``Epoch``: every delivery remembers the epoch it came on,
and is acknowledged or requeued only on that epoch's channel while it is alive. When the
connection drops, every epoch dies at once; a job that finishes afterwards has nothing to
acknowledge (the broker redelivers it), and the next channel's delivery tags, which start
again at 1, can never be confused with an old one's. This is the worker's only notion of
"this delivery belongs to a dead channel".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from roger.core.settle import AckTracker

# How long an ack that a gap in the settled tags would send alone waits for the gap to
# close (``AckTracker``): about the job processes' outcome grouping (2 ms), plus a turn.
ACK_HOLD_SECONDS = 0.003


class Epoch:
    """One consumer channel, from its first delivery until its connection is gone."""

    __slots__ = ("alive", "channel", "delivered", "tracker")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.tracker = AckTracker()
        self.delivered = self.tracker.delivered  # once per delivery: one call, not two
        self.alive = True

    def usable(self) -> bool:
        return self.alive and bool(self.channel.is_open)


class Ledger:
    """The epochs of the worker's consumer channels; acks are batched per loop turn, and
    the ones a gap would make single are held up to ``hold`` seconds (``AckTracker``)."""

    def __init__(
        self,
        call_later: Callable[[float, Callable[[], None]], Any],
        clock: Callable[[], float] = time.monotonic,
        hold: float = ACK_HOLD_SECONDS,
    ) -> None:
        self._epochs: list[Epoch] = []
        self._call_later = call_later
        self._clock = clock
        self._hold = hold
        self._flush_due = False
        self._timer_due: float | None = None  # when the hold timer fires, if one is set
        self.after_flush: Callable[[], None] = lambda: None

    def open(self, channel: Any) -> Epoch:
        epoch = Epoch(channel)
        self._epochs.append(epoch)
        return epoch

    def lost(self) -> None:
        """The connection is gone: no delivery of any epoch so far is acknowledged."""
        for epoch in self._epochs:
            epoch.alive = False
        self._epochs.clear()

    def drop(self, epoch: Epoch) -> None:
        """One channel is gone (the broker closed it): none of its deliveries is acked."""
        epoch.alive = False
        if epoch in self._epochs:
            self._epochs.remove(epoch)

    def settle(self, epoch: Epoch, tag: int) -> None:
        """The delivery's outcome is safe elsewhere (or it succeeded): ack it soon."""
        if not epoch.alive:
            return
        epoch.tracker.settled(tag, self._clock())
        if not self._flush_due:
            self._flush_due = True
            self._call_later(0, self.flush)

    @staticmethod
    def requeue(epoch: Epoch, tag: int) -> None:
        """Back to the broker now, charging nothing."""
        if epoch.usable():
            epoch.channel.basic_nack(tag, requeue=True)
            epoch.tracker.forget(tag)

    def flush(self, final: bool = False) -> None:
        """Send the acks due; ``final``: every settled one, nothing held (stopping)."""
        self._flush_due = False
        now, hold = self._clock(), 0.0 if final else self._hold
        due: float | None = None
        for epoch in self._epochs:
            if epoch.usable():
                for tag, multiple in epoch.tracker.flush(now, hold):
                    epoch.channel.basic_ack(tag, multiple)
                held = epoch.tracker.held_until(hold)
                if held is not None and (due is None or held < due):
                    due = held
        if due is not None and (self._timer_due is None or due < self._timer_due):
            self._timer_due = due
            self._call_later(max(0.0, due - now), self._on_timer)
        self.after_flush()

    def _on_timer(self) -> None:
        self._timer_due = None
        self.flush()
