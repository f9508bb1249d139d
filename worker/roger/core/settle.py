"""Which deliveries of one channel can be acknowledged, cheaply.

Where a failure goes (retry level or burial) is decided in ``roger.core.fate``.
"""

from __future__ import annotations

from collections import deque


class AckTracker:
    """Deliveries of one channel, settled out of order, acknowledged cheaply.

    ``flush`` returns ``(tag, multiple)`` pairs: one ``multiple`` ack for the longest
    settled prefix, then single acks for the tags settled behind an unsettled one. Those
    are *held* first, up to ``hold`` seconds: the gap is nearly always a job finishing in
    the other job process, and one ``multiple`` ack then covers them all. Every ack frame
    is a log entry for a quorum queue, so acking one by one cost the broker more than twice
    the CPU a job (measured: ~44 against ~19 us). A hold never lasts longer than ``hold``
    (a long job does not keep the settled ones behind it from their acks), nor once the
    held tags are half of the channel's unacknowledged deliveries: they would be taking
    the prefetch window (prefetch = max_workers) from jobs waiting to be delivered.
    """

    __slots__ = ("_acked", "_order", "_settled")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # unacknowledged tags, in delivery order
        self._settled: dict[int, float] = {}  # settled, not yet acknowledged: when
        self._acked: set[int] = set()  # acknowledged alone, still in _order

    def delivered(self, tag: int) -> None:
        self._order.append(tag)

    def settled(self, tag: int, now: float = 0.0) -> None:
        self._settled.setdefault(tag, now)

    def forget(self, tag: int) -> None:
        """The delivery was rejected or nacked by other means: never ack it."""
        self._settled.pop(tag, None)
        self._acked.add(tag)

    def pending(self) -> int:
        return len(self._order) - len(self._acked)

    def held_until(self, hold: float) -> float | None:
        """When the oldest held tag is due its single ack (None: nothing held)."""
        if not self._settled:
            return None
        return min(self._settled.values()) + hold

    def flush(self, now: float = 0.0, hold: float = 0.0) -> list[tuple[int, bool]]:
        order, settled, acked = self._order, self._settled, self._acked
        top = 0
        while order:
            tag = order[0]
            if tag in acked:
                acked.discard(tag)
            elif tag in settled:
                del settled[tag]
                top = tag
            else:
                break
            order.popleft()
        out: list[tuple[int, bool]] = [(top, True)] if top else []
        if settled and (
            hold <= 0 or min(settled.values()) + hold <= now or 2 * len(settled) >= self.pending()
        ):
            for tag in sorted(settled):
                out.append((tag, False))
                acked.add(tag)
            settled.clear()
        return out
