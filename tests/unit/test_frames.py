"""The pipe protocol: every frame kind round-trips, and garbage is refused as such."""

from __future__ import annotations

import json

import pytest

from roger.core import frames

pytestmark = pytest.mark.unit
JOB = {"id": "j1", "name": "m.x:f", "args": {"a": [1, None]}, "queue": "default"}

TO_PARENT: list[frames.ToParent] = [
    frames.Ready(1234, 8),
    frames.Fatal("ImportError: no module named jobs"),
    frames.Outcome(7, 0.25, 1795889042.5),
    frames.Outcome(8, 1.0, 1795889042.5, ("ValueError", "boom"), "Traceback ..."),
    frames.Outcome(9, invalid="job_not_allowed"),
    frames.Done(7),
    frames.Done(8, (("cb:Audit", "after_run", "exception"),)),
    frames.OkDone(42, 0.000013, 1795889042.931717),
    frames.Late(6, "job", ""),
]
TO_CHILD: list[frames.ToChild] = [
    frames.Run(1, "on_error", False, JOB),
    frames.Run(2, "on_buried", True, JOB),
    frames.RunHooks(3, "on_cancel", None, None, None, JOB),
    frames.RunHooks(4, "on_error", ("timeout", "exceeded"), None, 17.5, JOB),
]


def test_every_frame_kind_round_trips_byte_by_byte() -> None:
    data = b"".join(frames.encode(f) for f in TO_PARENT)
    reader = frames.parent_reader()
    got: list[frames.ToParent] = []
    for i in range(len(data)):  # partial frames wait for the rest
        got += reader.feed(data[i : i + 1])
    assert got == TO_PARENT
    assert frames.child_reader().feed(b"".join(frames.encode(f) for f in TO_CHILD)) == TO_CHILD


def test_run_embeds_the_delivery_body_as_is() -> None:
    body = json.dumps(JOB).encode()
    [run] = frames.child_reader().feed(frames.encode_run(5, "on_error", True, body))
    assert run == frames.Run(5, "on_error", True, JOB)


@pytest.mark.parametrize(
    "payload",
    [
        b"[1]",  # not an object
        b"S12 zero 1.0",  # a bad ok-done frame
        b'{"t":"nope","k":1}',  # unknown kind
        b'{"t":"o"}',  # missing key
        b'{"t":"d","k":1,"f":[["only-two","x"]]}',  # malformed failure
        b"\xff",  # not JSON
    ],
)
def test_garbage_from_a_job_process_is_a_frame_error(payload: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.parent_reader().feed(frames._frame(payload))


def test_a_child_refuses_unknown_hooks_and_oversized_frames() -> None:
    with pytest.raises(frames.FrameError):
        frames.child_reader().feed(frames._frame(b'{"t":"run","k":1,"h":"rm","s":0,"job":{}}'))
    with pytest.raises(frames.FrameError):
        frames.parent_reader().feed(b"\xff\xff\xff\xff")
