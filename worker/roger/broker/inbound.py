"""Deliveries read straight off a consuming connection's buffer: the worker's hot path.

For every inbound frame pika builds a frame object, looks for an RPC callback waiting on
it, runs it through the channel's content assembler, and copies the rest of its receive
buffer; a delivery is three frames, so for a consumer that was about half of the worker's
loop. ``install`` replaces the connection's ``_on_data_available`` with a reader that
walks the buffer by offset and, for a ``basic.deliver`` followed on the same channel by
its content header and body frames, calls the channel's consumer callback at once with
what pika would pass: a ``Basic.Deliver``, ``BasicProperties`` and the body, decoded by
``roger.broker.deliver_fields`` (pika's field rules without its walk over every flag).
Every other frame, and any delivery this path does not take whole (its consumer is being
cancelled, its content is not yet all in the buffer, or another channel's frame comes in
between), goes through pika's ``_process_frame`` unchanged. ``tests/unit/test_inbound.py``
feeds both readers the same bytes, cut at every boundary, and compares what the consumer
receives.

It leans on four private attributes of pika's ``Connection`` (``_frame_buffer``,
``_channels``, ``_process_frame``, ``bytes_received``) and two of ``Channel``
(``_consumers``, ``_cancelled``); ``install`` checks them and leaves pika's reader in place
(returning False) when a pika release no longer has them.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pika import exceptions, frame
from pika.channel import Channel

from roger.broker import deliver_fields

_FRAME: Final = struct.Struct(">BHI")  # type, channel, payload size
_HEADER: Final = struct.Struct(">HHQ")  # class, weight, body size
_DELIVER: Final = b"\x00\x3c\x00\x3c"  # basic.deliver: class 60, method 60
_METHOD, _CONTENT_HEADER, _BODY = 1, 2, 3
_FRAME_END: Final = 0xCE
_OVERHEAD: Final = 8  # 7 bytes of frame header, 1 frame-end octet
_WAIT_FOR_BODY: Final = 256 * 1024  # bytes: see _Reader._delivery
_RECV_BYTES: Final = 65536  # pika reads 4 KiB per recv(); a burst of deliveries is more

_CONNECTION_NEEDS: Final = ("_frame_buffer", "_channels", "_process_frame", "bytes_received")
_CHANNEL_NEEDS: Final = ("_consumers", "_cancelled")


def install(conn: Any) -> bool:
    """Read ``conn``'s deliveries on this module's path; False (pika's path kept) if the
    pika in use lacks what it needs. Call it once the connection is open."""
    if not all(hasattr(conn, name) for name in _CONNECTION_NEEDS):
        return False
    if not _channel_has_attrs():
        return False
    transport = getattr(conn, "_transport", None)
    if transport is not None and getattr(transport, "_MAX_RECV_BYTES", 0) < _RECV_BYTES:
        transport._MAX_RECV_BYTES = _RECV_BYTES
    conn._on_data_available = _Reader(conn).data_available
    return True


def _channel_has_attrs() -> bool:
    """Whether pika's ``Channel`` still sets the attributes this path reads."""
    source = Channel.__init__.__code__.co_names
    return all(name in source for name in _CHANNEL_NEEDS)


def _frame_at(buf: bytes, at: int, limit: int) -> tuple[int, int, int] | None:
    """(type, channel, end offset) of the frame at ``at``; None while it is incomplete.
    Its payload is ``buf[at + 7 : end - 1]``."""
    if limit - at < _OVERHEAD:
        return None
    kind, channel, size = _FRAME.unpack_from(buf, at)
    end: int = at + 7 + size + 1
    if end > limit:
        return None
    if buf[end - 1] != _FRAME_END:
        raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
    return kind, channel, end


class _Reader:
    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def data_available(self, data: bytes) -> None:
        conn = self.conn
        buf = conn._frame_buffer + data if conn._frame_buffer else data
        conn._frame_buffer = buf
        limit, pos = len(buf), 0
        try:
            while (found := _frame_at(buf, pos, limit)) is not None:
                kind, number, end = found
                taken = -1
                if kind == _METHOD and buf[pos + 7 : pos + 11] == _DELIVER:
                    taken = self._delivery(buf, pos, end, number, limit)
                    if taken == 0:
                        break  # the rest of its content has not arrived yet
                if taken > 0:
                    pos = taken
                else:  # pika's own path, one frame at a time
                    _, value = frame.decode_frame(buf[pos:end])
                    pos = end
                    conn._process_frame(value)
                if conn._frame_buffer is not buf:
                    return  # the connection was reset meanwhile: its buffer is new
        finally:
            if conn._frame_buffer is buf:
                conn._frame_buffer = buf[pos:]
                conn.bytes_received += pos

    def _delivery(self, buf: bytes, pos: int, end: int, number: int, limit: int) -> int:
        """The end offset of the delivery at ``pos`` once handed to its consumer; 0 if its
        content (a small one) is not all in the buffer yet; -1 if pika's path must take it.
        The content is looked at before the method is decoded: a delivery cut by a read
        is decoded once, when all of it is here."""
        channel = self.conn._channels.get(number)
        if channel is None:
            return -1
        header = _frame_at(buf, end, limit)  # the content header, on the same channel
        if header is None:
            return 0
        if header[0] != _CONTENT_HEADER or header[1] != number:
            return -1
        _, _, body_size = _HEADER.unpack_from(buf, end + 7)
        # A body still on its way is waited for only while small: a large one goes frame
        # by frame through pika's path, so the buffer never holds (or re-copies) all of it.
        incomplete = 0 if body_size <= _WAIT_FOR_BODY else -1
        parts: list[bytes] = []  # the body frames, on the same channel, until body_size
        got, at = 0, header[2]
        while got < body_size:
            body = _frame_at(buf, at, limit)
            if body is None:
                return incomplete
            if body[0] != _BODY or body[1] != number:
                return -1
            parts.append(buf[at + 7 : body[2] - 1])
            got += body[2] - at - _OVERHEAD
            at = body[2]
        if got > body_size:
            raise exceptions.BodyTooLongError(got, body_size)
        method = deliver_fields.deliver(buf, pos + 11)
        tag = method.consumer_tag
        consumer = None if tag in channel._cancelled else channel._consumers.get(tag)
        if consumer is None:
            return -1
        props = deliver_fields.properties(buf, end + 7 + 12)
        self.conn.frames_received += 2 + len(parts)
        consumer(channel, method, props, parts[0] if len(parts) == 1 else b"".join(parts))
        return at
