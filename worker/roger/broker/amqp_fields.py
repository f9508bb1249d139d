"""Makes pika read message headers with ``roger.core.amqp_fields`` (which never raises
on what a broker relays) instead of its own reader (which does: see that module)."""

from __future__ import annotations

import pika.data

from roger.core import amqp_fields


def install() -> None:
    """Idempotent; affects every pika connection of this process (they share the module)."""
    pika.data.decode_table = amqp_fields.decode_table
    pika.data.decode_value = amqp_fields.decode_value
