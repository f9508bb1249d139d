"""Which pipelined publishes a broker confirm settles (pure).

A channel in confirm mode numbers its publishes 1, 2, 3, ...; the broker answers with
``basic.ack``/``basic.nack`` carrying one delivery tag, or with ``multiple`` set, every
outstanding tag up to it. Confirms of different queues can arrive out of order, so the
ledger keeps the outstanding tags in publish order and settles exactly the ones named.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class ConfirmLedger(Generic[T]):
    """Outstanding publishes of one channel, by delivery tag."""

    def __init__(self) -> None:
        self._next = 1
        self._outstanding: dict[int, T] = {}  # insertion order is tag order

    def __len__(self) -> int:
        return len(self._outstanding)

    def add(self, item: T) -> int:
        """Record the next publish; returns its delivery tag."""
        tag = self._next
        self._next += 1
        self._outstanding[tag] = item
        return tag

    def settle(self, tag: int, multiple: bool) -> list[T]:
        """The publishes a confirm of ``tag`` settles, removed from the ledger."""
        if not multiple:
            item = self._outstanding.pop(tag, None)
            return [] if item is None else [item]
        done = []
        for t in self._outstanding:
            if t > tag:
                break
            done.append(t)
        return [self._outstanding.pop(t) for t in done]

    def drain(self) -> list[T]:
        """Every outstanding publish (the channel is gone: none will be confirmed)."""
        items = list(self._outstanding.values())
        self._outstanding.clear()
        return items
