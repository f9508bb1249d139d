"""The single source of truth for every RabbitMQ name Roger uses.

The names follow Roger (Elixir) so that tools reading the broker recognise them:
``<partition>-<queue>``, ``.retry.<seconds>``, ``.buried``, plus ``.invalid`` for
messages that must never run.

Tenant isolation (no two partitions on one broker share a name) rests on three facts,
proven by ``tests/unit/test_naming_isolation.py``:

- partition-wide state is ``<partition>.<suffix>``; partition ids have no dot, so the
  text before the first dot names the partition, and the state suffixes (``control``,
  ``pause.<q>``, ``qkey.<hex>``, ``delay.<k>``, ...) never equal a job queue's (``""``,
  ``retry.<s>``, ``buried``, ``invalid``, a waiting room's ``<hex>``);
- ``<partition>-<queue>`` (the *stem* of a queue's main, retry, buried and invalid queues)
  is ambiguous (``a`` + ``b-c`` and ``a-b`` + ``c``), so each stem is claimed on the broker
  by the Partition that uses it (``queue_claim_exchange_name``), as the partition id is;
- a stem never contains ``-execution-waiting-`` (``validate_queue``), which every
  execution-key waiting room does, and a partition id never ends with
  ``-execution-waiting`` (else none of its stems is valid).
"""

from __future__ import annotations

import hashlib
import re

# Partition and queue names end up in queue names (max 255 bytes) and in Kubernetes
# object names, so they are kept to DNS-label-like characters.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

DEFAULT_RETRY_LEVELS: tuple[int, ...] = (1, 3, 5, 10, 20, 35, 60, 100, 200, 400, 1000, 1800)
DEFAULT_BURIED_MAX_LENGTH = 100


class InvalidName(ValueError):
    """A partition or queue name that cannot become a RabbitMQ/Kubernetes name."""


def validate_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidName(
            f"{kind} name {name!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting and ending with a letter or digit"
        )
    return name


WAITING_ROOM_INFIX = "-execution-waiting-"


def queue_name(partition: str, queue: str) -> str:
    """The stem of a partition queue's names (and its main queue's name)."""
    return f"{partition}-{queue}"


def queue_name_problem(partition: str, queue: str) -> str | None:
    """Why ``queue`` cannot be a queue of ``partition`` (None when it can).

    A stem containing ``-execution-waiting-`` could be the waiting room of an execution
    key (``<p>-execution-waiting-<key>``) of this partition or of another one.
    """
    stem = queue_name(partition, queue)
    if WAITING_ROOM_INFIX in stem:
        return (
            f"queue {queue!r} of partition {partition!r}: its RabbitMQ name {stem!r} contains "
            f"{WAITING_ROOM_INFIX!r}, which names execution-key waiting rooms; rename the queue"
            " (or use another partition id)"
        )
    return None


def validate_queue(partition: str, queue: str) -> str:
    """``queue`` as a queue of ``partition``: a valid name whose stem is unambiguous."""
    validate_name("queue", queue)
    problem = queue_name_problem(partition, queue)
    if problem:
        raise InvalidName(problem)
    return queue


def retry_queue_name(partition: str, queue: str, seconds: int) -> str:
    return f"{queue_name(partition, queue)}.retry.{seconds}"


def buried_queue_name(partition: str, queue: str) -> str:
    return f"{queue_name(partition, queue)}.buried"


# Matches every ``buried_queue_name`` and no other name of this module (tested): the
# operator's vhost-wide bound policy (``--bound-policy vhost``) selects by it. Partition and
# queue names have no dot, and no partition-wide state is ``<partition>.buried``.
BURIED_QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]*\.buried$"


def buried_log_name(partition: str, queue: str) -> str:
    """Stream of buried jobs, read by offset (``roger.core.buried``); ``.buried`` is the
    worker's bounded intake, filed into it by every ``roger buried`` verb."""
    return f"{queue_name(partition, queue)}.buried.log"


def replay_staging_name(partition: str, queue: str) -> str:
    """Replayed jobs wait here between their copy and the broker's move to the queue."""
    return f"{queue_name(partition, queue)}.replaying"


def buried_lock_name(partition: str, queue: str) -> str:
    """Exclusive queue held by whoever files, replays or drops buried jobs of a queue."""
    return f"{partition}.buried-lock.{queue}"


def invalid_queue_name(partition: str, queue: str) -> str:
    return f"{queue_name(partition, queue)}.invalid"


def execution_waiting_queue_name(partition: str, execution_key: str) -> str:
    """Where jobs wait while another job with their execution key runs (Roger's name).

    A key that is not name-safe (or too long) is replaced by ``sha256.<digest>``; a safe
    key never contains a dot, so the two forms never collide.
    """
    return f"{partition}-execution-waiting-{key_label(execution_key)}"


def all_queue_names(partition: str, queue: str, retry_levels: tuple[int, ...]) -> list[str]:
    """Every queue that belongs to one partition queue, main queue first."""
    return [
        queue_name(partition, queue),
        *(retry_queue_name(partition, queue, s) for s in retry_levels),
        buried_queue_name(partition, queue),
        invalid_queue_name(partition, queue),
    ]


def belongs_to_partition(name: str, partition: str) -> bool:
    """Whether a queue or stream name is one of ``partition``'s: its job queues
    (``<p>-...``) or its state (``<p>.control``, ``<p>.pause.<q>``, keys, ...)."""
    return name.startswith((f"{partition}-", f"{partition}."))


def claim_exchange_name(partition: str) -> str:
    """A durable exchange whose ``alternate-exchange`` argument names the Partition object
    (``<namespace>/<name>``) that owns ``partition`` on this broker.

    RabbitMQ refuses to re-declare an exchange with a different ``alternate-exchange``, so
    the first declare claims the partition atomically and a second claimant learns the
    owner from the refusal. Nothing is ever published to it.
    """
    return f"roger.claim.{partition}"


def queue_claim_exchange_name(partition: str, queue: str) -> str:
    """The claim (as ``claim_exchange_name``) of the stem ``<partition>-<queue>``: whoever
    declares it first owns the queue's main, retry, buried and invalid queues.

    Claims are on the stem, so ``a`` + ``b-c`` and ``a-b`` + ``c`` claim the same exchange
    and the second Partition is refused. Partition ids have no dot, so these never equal a
    partition claim.
    """
    return f"roger.claim.queue.{queue_name(partition, queue)}"


# -- partition-wide state (part 2): cancel, pause, queue keys, execution keys ----------
# Keys (queue_key / execution_key) are arbitrary strings, so names derived from them use a
# digest; the partition-wide objects live under ``<partition>.`` (never ``<partition>-``,
# which is the namespace of partition queues).
_SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def key_digest(key: str) -> str:
    """128 bits of SHA-256 of a key: collision-free in practice, short enough for names."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def key_label(key: str) -> str:
    """The key itself when it is name-safe, else ``sha256.<digest>``."""
    return key if _SAFE_KEY_RE.match(key) else f"sha256.{key_digest(key)}"


def control_stream_name(partition: str) -> str:
    """Stream of control events (cancel, cancel handled, execution key waiting)."""
    return f"{partition}.control"


def checkpoint_stream_name(partition: str) -> str:
    """Stream of checkpoints: the control stream folded up to an offset (fast start-up)."""
    return f"{partition}.checkpoint"


def pause_stream_name(partition: str, queue: str) -> str:
    """Stream whose last event is the pause state of one partition queue."""
    return f"{partition}.pause.{queue}"


def workers_stream_name(partition: str) -> str:
    """Stream of worker status records (heartbeats with running jobs), for ``info``."""
    return f"{partition}.workers"


def queue_key_queue_name(partition: str, queue_key: str) -> str:
    """Holds one token while a job with this queue_key is queued or running."""
    return f"{partition}.qkey.{key_digest(queue_key)}"


def queue_key_lock_name(partition: str, queue_key: str) -> str:
    """Exclusive queue held by whoever reads or writes the key's token at that moment."""
    return f"{partition}.qkey.{key_digest(queue_key)}.lock"


def execution_lock_queue_name(partition: str, execution_key: str) -> str:
    """Exclusive queue declared by the connection running a job with this key: a lock."""
    return f"{partition}.xkey.{key_digest(execution_key)}"


# -- delayed jobs: the ladder (``roger.core.delay``) ---------------------------------
# Partition-wide state like the others (``<partition>.delay.<k>``): a delayed job's queue is
# only in its routing key, so one ladder serves every queue of the partition.


def delay_queue_name(partition: str, level: int) -> str:
    """Level ``level`` of the ladder: holds a delayed job ``UNIT_MS * 2**level`` ms."""
    return f"{partition}.delay.{level}"


def delay_exchange_name(partition: str, level: int) -> str:
    """The topic exchange in front of level ``level`` (the same text as its queue's name:
    exchanges and queues are separate namespaces in RabbitMQ)."""
    return f"{partition}.delay.{level}"


def delay_due_exchange_name(partition: str) -> str:
    """Below level 0: routes each due job to its queue by its routing key's last word."""
    return f"{partition}.delay.due"
