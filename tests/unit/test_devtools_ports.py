"""``free_port`` never hands the same port out twice while its lease lasts, in this process
or another: two workers started together once drew the same port, and the second one
could not listen (a chaos run lost its fleet to it)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from roger_devtools import ports

pytestmark = pytest.mark.unit


def test_ports_handed_out_in_a_row_are_all_different() -> None:
    drawn = [ports.free_port() for _ in range(500)]  # ~14 repeats expected without leases
    assert len(set(drawn)) == len(drawn)
    assert all(ports.PORT_RANGE[0] <= p < ports.PORT_RANGE[1] for p in drawn)


def test_a_port_another_process_was_handed_is_not_handed_out_here() -> None:
    code = "from roger_devtools.ports import free_port; print(*(free_port() for _ in range(300)))"
    theirs = set(map(int, subprocess.check_output([sys.executable, "-c", code], text=True).split()))
    ours = {ports.free_port() for _ in range(300)}  # ~10 shared expected without leases
    assert len(theirs) == 300 and not theirs & ours


def test_a_port_that_is_listened_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(ports, "PORT_RANGE", (taken, taken + 1))
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port()
