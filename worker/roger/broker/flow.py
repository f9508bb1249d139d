"""Sequential code over callback-style pika: flows, steps and ``run``.

pika's ``SelectConnection`` answers every operation through a callback, so an operation
that needs three answers in a row used to be three nested ``done(bool)`` closures. A *flow*
is a generator that yields *steps* and reads top-down; ``run`` drives it on the ioloop
thread. A step is a function that starts one operation and calls ``resume`` once with its
answer; answering with an exception (``Refused``) raises it inside the flow at the
``yield``, where a ``try`` reads like the blocking code it stands for.

A flow whose connection dies is simply never resumed (its generator is collected): flows
must not rely on ``finally`` for anything but local clean-up.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

T = TypeVar("T")
Resume = Callable[[Any], None]
Step = Callable[[Resume], None]
Flow = Generator[Step, Any, T]


class Refused(Exception):
    """The broker refused an operation (closing its channel: ``code`` is the AMQP reply
    code) or the connection is gone (``code`` 0)."""

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(f"{code} {text}".strip())
        self.code = code


class _Answer:
    """One step's answer: taken once; late or repeated answers are ignored."""

    __slots__ = ("given", "then", "value")

    def __init__(self) -> None:
        self.given = False
        self.value: Any = None
        self.then: Resume | None = None

    def __call__(self, value: Any) -> None:
        if self.given:
            return
        self.given, self.value = True, value
        if self.then is not None:
            self.then(value)


def run(flow: Flow[T], done: Callable[[T], None] | None = None) -> None:
    """Drive ``flow`` until it returns (then ``done(result)``) or waits for an answer.

    Steps answered at once are looped over (no recursion however many there are).
    """

    def advance(value: Any) -> None:
        while True:
            try:
                failed = isinstance(value, BaseException)
                step = flow.throw(value) if failed else flow.send(value)
            except StopIteration as stop:
                if done is not None:
                    done(stop.value)
                return
            answer = _Answer()
            step(answer)
            if not answer.given:
                answer.then = advance
                return
            value = answer.value

    advance(None)


def answered(value: Any) -> Step:
    """A step that answers at once (for flows that sometimes need no broker round trip)."""
    return lambda resume: resume(value)
