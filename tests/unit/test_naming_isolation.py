"""Tenant isolation: no two Partitions on one broker ever resolve to the same RabbitMQ name.

Every name a partition uses belongs to a *thing*: a queue (main, retry, buried, invalid),
a queue's pause stream, a queue key (token queue and lock), an execution key (lock and
waiting room), the partition's own streams (control, checkpoint, workers), or its delay
ladder (queues and exchanges ``<p>.delay.<k>``, exchange ``<p>.delay.due``). A queue's
names hang off its stem ``<partition>-<queue>``, which the operator claims on the broker;
everything else hangs off the partition id, which is claimed too. So the promise is: two
different things share a name only when they are queues with the same stem, and then the
broker's claim refuses the second Partition (``QueueNameConflict``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roger.core import delay, naming

pytestmark = pytest.mark.unit

# Few, overlapping tokens so that the generator meets the near-collisions that matter:
# dashes inside ids and queue names, and the words of the waiting-room names.
TOKENS = ["a", "b", "c1", "execution", "waiting", "sha256", "retry", "pause", "x_y"]


def _name(tokens: list[str]) -> str:
    return "-".join(tokens)


def _valid(name: str) -> bool:
    try:
        naming.validate_name("name", name)
    except naming.InvalidName:
        return False
    return True


names = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map(_name).filter(_valid)
keys = st.one_of(
    names,
    st.text(max_size=12),
    st.lists(st.sampled_from([*TOKENS, ".", "A", " "]), min_size=1, max_size=4).map("-".join),
)
LEVELS = (1, 5, 30)


@dataclass(frozen=True)
class Thing:
    kind: str  # queue | pause | queue_key | execution_key | streams | delay
    partition: str
    label: str = ""

    def names(self) -> set[str]:
        p, x = self.partition, self.label
        if self.kind == "queue":
            return set(naming.all_queue_names(p, x, LEVELS))
        if self.kind == "pause":
            return {naming.pause_stream_name(p, x)}
        if self.kind == "queue_key":
            return {naming.queue_key_queue_name(p, x), naming.queue_key_lock_name(p, x)}
        if self.kind == "execution_key":
            return {
                naming.execution_lock_queue_name(p, x),
                naming.execution_waiting_queue_name(p, x),
            }
        if self.kind == "delay":  # queues and exchanges: one namespace here, to be strict
            return {
                *(naming.delay_queue_name(p, k) for k in range(delay.LEVELS)),
                *(naming.delay_exchange_name(p, k) for k in range(delay.LEVELS)),
                naming.delay_due_exchange_name(p),
            }
        return {
            naming.control_stream_name(p),
            naming.checkpoint_stream_name(p),
            naming.workers_stream_name(p),
        }

    def claim(self) -> str:
        """The broker claim that makes this thing one Partition's."""
        if self.kind == "queue":
            return naming.queue_claim_exchange_name(self.partition, self.label)
        return naming.claim_exchange_name(self.partition)


def admitted(partition: str, queue: str) -> bool:
    """What the CRD and the worker's config accept as a queue of ``partition``."""
    try:
        naming.validate_queue(partition, queue)
    except naming.InvalidName:
        return False
    return True


@st.composite
def things(draw: st.DrawFn) -> Thing:
    kind = draw(
        st.sampled_from(["queue", "pause", "queue_key", "execution_key", "streams", "delay"])
    )
    partition = draw(names)
    if kind in ("queue", "pause"):
        queue = draw(names)
        if not admitted(partition, queue):
            queue = "default"
        if not admitted(partition, queue):  # an id no queue can have: the CRD refuses it
            partition, queue = "p", queue if admitted("p", queue) else "default"
        return Thing(kind, partition, queue)
    if not admitted(partition, "default"):
        partition = "p"
    if kind in ("streams", "delay"):
        return Thing(kind, partition)
    return Thing(kind, partition, draw(keys))


def readings(name: str) -> list[Thing]:
    """Every thing that could have made ``name``, read with each '-' or '.' as the end of
    the partition id: the other tenants a name could be mistaken for."""
    out: list[Thing] = []
    for i, ch in enumerate(name):
        partition, rest = name[:i], name[i + 1 :]
        if not _valid(partition):
            continue
        if ch == "-":
            if rest.startswith("execution-waiting-") and "." not in rest:
                out.append(Thing("execution_key", partition, rest[len("execution-waiting-") :]))
            queue = rest.split(".", 1)[0]
            if _valid(queue):
                out.append(Thing("queue", partition, queue))
        elif ch == ".":
            out.append(Thing("streams", partition))
            if rest.startswith("delay."):
                out.append(Thing("delay", partition))
            if rest.startswith("pause.") and _valid(rest[len("pause.") :]):
                out.append(Thing("pause", partition, rest[len("pause.") :]))
    return [t for t in out if admitted(t.partition, t.label if t.label else "default")]


@st.composite
def pairs(draw: st.DrawFn) -> tuple[Thing, Thing]:
    """Two things; half of the time the second is a re-reading of one of the first's names."""
    a = draw(things())
    if draw(st.booleans()):
        candidates = readings(draw(st.sampled_from(sorted(a.names()))))
        if candidates:
            return a, draw(st.sampled_from(candidates))
    return a, draw(things())


@settings(max_examples=600, deadline=None)
@given(pairs())
def test_two_things_share_a_name_only_as_queues_of_one_claimed_stem(
    pair: tuple[Thing, Thing],
) -> None:
    a, b = pair
    if a == b:
        return
    shared = a.names() & b.names()
    if shared:
        assert a.kind == b.kind == "queue", (a, b, shared)
        assert naming.queue_name(a.partition, a.label) == naming.queue_name(b.partition, b.label)
        assert a.claim() == b.claim()  # so the broker refuses the second claimant
        assert a.partition != b.partition  # one partition's queues never share a stem


@settings(max_examples=300, deadline=None)
@given(names, names, names)
def test_queue_claims_never_equal_partition_claims(p1: str, p2: str, queue: str) -> None:
    assert naming.queue_claim_exchange_name(p1, queue) != naming.claim_exchange_name(p2)


@settings(max_examples=300, deadline=None)
@given(names, names, names, names)
def test_distinct_stems_have_distinct_claims(p1: str, q1: str, p2: str, q2: str) -> None:
    same_stem = naming.queue_name(p1, q1) == naming.queue_name(p2, q2)
    same_claim = naming.queue_claim_exchange_name(p1, q1) == naming.queue_claim_exchange_name(
        p2, q2
    )
    assert same_stem == same_claim


def test_the_ambiguous_pairs_claim_the_same_name() -> None:
    """Partition a + queue b-c and Partition a-b + queue c: one claim, one winner."""
    assert naming.all_queue_names("a", "b-c", LEVELS) == naming.all_queue_names("a-b", "c", LEVELS)
    assert naming.queue_claim_exchange_name("a", "b-c") == naming.queue_claim_exchange_name(
        "a-b", "c"
    )


@pytest.mark.parametrize(
    ("partition", "queue"),
    [
        ("p", "execution-waiting-x"),  # the waiting room of key x in p itself
        ("p-execution", "waiting-x"),  # ... of key x in partition p
        ("p-execution-waiting", "x"),
        ("p-execution-waiting-x", "default"),
        ("p", "a-execution-waiting-x"),  # ... of key x in partition p-a
    ],
)
def test_queues_that_could_be_waiting_rooms_are_refused(partition: str, queue: str) -> None:
    with pytest.raises(naming.InvalidName, match="execution-waiting"):
        naming.validate_queue(partition, queue)


def crd_rules_refuse(partition: str, queues: list[str]) -> bool:
    """The CRD's CEL rules on partition id and queue names, as written in crds/."""
    pid_rule = not ("-execution-waiting-" in partition or partition.endswith("-execution-waiting"))
    straddle_rule = not (
        partition.endswith("-execution") and any(q.startswith("waiting-") for q in queues)
    )
    queue_rule = all(
        not (q.startswith("execution-waiting-") or "-execution-waiting-" in q) for q in queues
    )
    return not (pid_rule and straddle_rule and queue_rule)


@settings(max_examples=500, deadline=None)
@given(names, st.lists(names, min_size=1, max_size=3))
def test_crd_rules_refuse_exactly_what_the_naming_refuses(
    partition: str, queues: list[str]
) -> None:
    """The CRD splits the one stem rule into three CEL rules (the CEL cost budget allows no
    concatenation per queue); together they refuse exactly the same Partitions."""
    expected = any(naming.queue_name_problem(partition, q) for q in queues)
    assert crd_rules_refuse(partition, queues) == expected


def test_crd_carries_the_rules() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "crds" / "partitions.roger.dev.yaml").read_text()
    for fragment in (
        ".contains('-execution-waiting-') && !(has(self.spec.partitionId)",
        ".endsWith('-execution-waiting')",
        ".endsWith('-execution') || !self.spec.queues.exists(q, q.name.startsWith('waiting-'))",
        "!self.startsWith('execution-waiting-') && !self.contains('-execution-waiting-')",
    ):
        assert fragment in text, fragment


@settings(max_examples=400, deadline=None)
@given(things())
def test_the_buried_pattern_matches_the_buried_intake_and_nothing_else(thing: Thing) -> None:
    """The operator's vhost-wide bound policy selects by it: it must bound each ``.buried``
    and never another Roger queue (a stream, a lock, a waiting room, the buried log)."""
    pattern = re.compile(naming.BURIED_QUEUE_PATTERN)
    extra = set()
    if thing.kind == "queue":
        p, q = thing.partition, thing.label
        extra = {naming.buried_log_name(p, q), naming.replay_staging_name(p, q)}
        extra |= {naming.buried_lock_name(p, q), naming.invalid_queue_name(p, q)}
    matched = {n for n in thing.names() | extra if pattern.search(n)}
    wanted = {naming.buried_queue_name(thing.partition, thing.label)}
    assert matched == (wanted if thing.kind == "queue" else set())
