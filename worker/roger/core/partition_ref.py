"""Where a Partition object's jobs live: its partition id and the Secret holding its broker.

One source of truth for the operator (``roger_operator.builders.model``) and ``kubectl
roger`` (``roger.cli.kubectl``): both read the same fields with the same defaults, and
decode the Secret's value the same way. Pure: the callers fetch the objects.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from roger.core.amqp_urls import parse_amqp_urls

DEFAULT_SECRET_KEY: Final = "url"


class PartitionRefError(ValueError):
    """A Partition or Secret that does not say where the broker is; the message says why."""


@dataclass(frozen=True)
class BrokerRef:
    """The partition id the workers use and the Secret (of the Partition's namespace)."""

    partition_id: str
    secret_name: str
    secret_key: str


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def broker_ref(partition: Mapping[str, Any]) -> BrokerRef:
    """``spec.partitionId`` (default: the object's name) and ``spec.amqp.secretRef``
    (``key`` default ``url``) of a Partition object as the API returns it."""
    meta = _mapping(partition.get("metadata"))
    spec = _mapping(partition.get("spec"))
    ref = _mapping(_mapping(spec.get("amqp")).get("secretRef"))
    if not ref.get("name"):
        raise PartitionRefError("spec.amqp.secretRef.name is required")
    return BrokerRef(
        partition_id=str(spec.get("partitionId") or meta.get("name") or ""),
        secret_name=str(ref["name"]),
        secret_key=str(ref.get("key") or DEFAULT_SECRET_KEY),
    )


def secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """The text under ``key`` of a Secret object (``data`` is base64), stripped; None when
    the key is absent or empty. Raises PartitionRefError when it is not base64 UTF-8 text."""
    raw = _mapping(secret.get("data")).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(str(raw), validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise PartitionRefError(f"key {key} is not a valid text value") from None


def with_address(url_text: str, address: str) -> str:
    """The Secret's broker URL(s) aimed at ``address`` (``host:port``, e.g. the local end of
    ``kubectl port-forward``): the first URL's scheme, credentials, vhost and query kept."""
    first = urlsplit(parse_amqp_urls(url_text)[0])
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PartitionRefError(f"broker address {address!r} must be HOST:PORT")
    userinfo = first.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit((first.scheme, netloc, first.path, first.query, ""))
