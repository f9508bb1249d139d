"""Which deliveries of one channel can be acknowledged, cheaply.

Where a failure goes (retry level or burial) is decided in ``roger.core.fate``.
"""

from __future__ import annotations

from collections import deque


class AckTracker:
    """Deliveries of one channel, settled out of order, acknowledged cheaply.

    ``flush`` returns ``(tag, multiple)`` pairs: one ``multiple`` ack for the longest
    settled prefix, and single acks for settled tags behind an unsettled one, so that a
    long job never holds back the prefetch window (prefetch = max_workers).
    """

    __slots__ = ("_acked", "_order", "_settled")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # unacknowledged tags, in delivery order
        self._settled: set[int] = set()  # settled, not yet acknowledged
        self._acked: set[int] = set()  # acknowledged alone, still in _order

    def delivered(self, tag: int) -> None:
        self._order.append(tag)

    def settled(self, tag: int) -> None:
        self._settled.add(tag)

    def forget(self, tag: int) -> None:
        """The delivery was rejected or nacked by other means: never ack it."""
        self._settled.discard(tag)
        self._acked.add(tag)

    def pending(self) -> int:
        return len(self._order) - len(self._acked)

    def flush(self) -> list[tuple[int, bool]]:
        order, settled, acked = self._order, self._settled, self._acked
        top = 0
        while order:
            tag = order[0]
            if tag in acked:
                acked.discard(tag)
            elif tag in settled:
                settled.discard(tag)
                top = tag
            else:
                break
            order.popleft()
        out: list[tuple[int, bool]] = [(top, True)] if top else []
        if settled:
            for tag in sorted(settled):
                out.append((tag, False))
                acked.add(tag)
            settled.clear()
        return out
