"""``kubectl roger``: the ``roger`` admin verbs against a Partition by name (docs/admin.md).

The plugin never holds credentials of its own: it runs the user's ``kubectl`` (found on
``PATH``, or ``$KUBECTL``) with the user's flags (``--kubeconfig``, ``--context``, ``-n``,
``--as``, ...) to read the Partition and its broker Secret, so Kubernetes RBAC decides who
may act. Which partition id and which Secret a Partition means is
``roger.core.partition_ref``, the function the operator uses too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from roger.cli.common import EXIT_USAGE, UsageError
from roger.cli.kube_access import (
    BROKER_ADDRESS_ENV,
    PASSED_FLAGS,
    Kube,
    KubeRefused,
    split_kube_flags,
)

PROG = "kubectl roger"
EXIT_KUBE = 6  # Kubernetes refused (RBAC) or the object is not there
VERBS = ("buried", "jobs", "purge", "info", "pause", "resume", "cancel", "enqueue")
CONNECT_HINT = (
    "; the Secret's address may only be reachable in the cluster: run `kubectl port-forward`"
    " to the broker and pass --broker-address 127.0.0.1:PORT (docs/admin.md)"
)

USAGE = f"""usage: {PROG} VERB ... [-n NAMESPACE] [kubectl flags] [--broker-address HOST:PORT]

The roger admin verbs, with the broker found from the Partition's Secret:
  buried list|show|replay|drop PARTITION ...   jobs PARTITION     purge PARTITION --queue Q
  info PARTITION    pause|resume PARTITION QUEUE    cancel PARTITION ID
  enqueue PARTITION JOB [ARGS]                 top [-n NS | -A] [--interval S] [--once]
PARTITION is the Partition object's name. kubectl flags passed through: -n/--namespace,
{", ".join(PASSED_FLAGS)}.
--broker-address HOST:PORT (or ${BROKER_ADDRESS_ENV}) connects there instead of the Secret's
address, e.g. the local end of `kubectl port-forward`; see docs/admin.md.
"""


def _verb(kube: Kube, rest: list[str]) -> int:
    from roger.cli import _parser, run

    if "--amqp-url" in rest or any(a.startswith("--amqp-url=") for a in rest):
        raise UsageError("the broker comes from the Partition's Secret: drop --amqp-url")
    opts = _parser(PROG).parse_args(rest)
    if getattr(opts, "partition", None) is None:
        raise UsageError(f"{opts.command} needs a Partition name (every one: {PROG} top --once)")
    partition = kube.partition(opts.partition)
    ref, opts.amqp_url = kube.broker_url(partition)
    if opts.command == "info" and not opts.queue:  # the Partition says which queues it has
        opts.queue = [str(q["name"]) for q in (partition.get("spec") or {}).get("queues") or ()]
    opts.partition = ref.partition_id
    return run(opts, CONNECT_HINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, rest = split_kube_flags(args)
        if not rest or rest[0] in ("-h", "--help", "help"):
            print(USAGE, end="")
            return 0 if rest else EXIT_USAGE
        kube = Kube(flags)
        if rest[0] == "top":
            from roger.cli.top import top

            return top(kube, rest[1:])
        if rest[0] not in VERBS:
            raise UsageError(f"unknown verb {rest[0]!r}; one of: top, {', '.join(VERBS)}")
        return _verb(kube, rest)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KubeRefused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_KUBE


if __name__ == "__main__":
    sys.exit(main())
