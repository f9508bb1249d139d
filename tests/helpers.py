"""kubectl for the tests that use the local cluster (polling: ``roger_devtools.polling``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests import kube_api

CRDS = Path(__file__).resolve().parents[1] / "crds"

# The first segment of every name the tests give a namespace or Partition ("t" unless set).
# Two checkouts sharing one local cluster set different tags (ROGER_TEST_TAG=ann, bob, ...),
# so the test operators of one never act on the other's namespaces (their globs start with
# it). The streams of `make test` add their first letter, "k", "b" or "c" ("tk", "tb",
# "tc": roger_devtools/test_streams.py): they are checkouts of their own in this sense, and
# never act on one another's objects (so no checkout's tag should be another's plus one of
# those letters).
TEST_TAG = os.environ.get("ROGER_TEST_TAG", "t")
# A namespace name is a DNS label (at most 63 characters); the longest test name takes 38 of
# them after the tag, so a tag is a few lower-case letters or digits.
if not re.fullmatch(r"[a-z0-9]{1,6}", TEST_TAG):
    raise SystemExit(f"ROGER_TEST_TAG={TEST_TAG!r}: expected 1-6 lower-case letters or digits")


class Kubectl:
    """kubectl against the local cluster, optionally impersonating someone."""

    def __init__(self, binary: str, kubeconfig: str, as_user: str | None = None) -> None:
        self.base = [binary, "--kubeconfig", kubeconfig]
        self.kubeconfig = kubeconfig
        self.as_user = as_user
        if as_user:
            self.base += ["--as", as_user]

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        get = None if self.as_user or stdin is not None else kube_api.parse(args)
        if get is not None:  # a GET as JSON: one HTTP request instead of a kubectl process
            proc = kube_api.run(self.kubeconfig, args, get)
        else:
            proc = subprocess.run([*self.base, *args], input=stdin, text=True, capture_output=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: str, *args: str) -> None:
        self.run("apply", "-f", "-", *args, stdin=manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.run("get", *args, "-o", "json").stdout)

    def drop_finalizers(self, namespace: str, kind: str, name: str) -> None:
        """Let an object go without its controller (gone, or nothing left to clean up)."""
        self.run(
            *("-n", namespace, "patch", kind, name, "--type=merge"),
            *("-p", '{"metadata":{"finalizers":null}}'),
            check=False,
        )


def install_crds(kubectl: Kubectl) -> None:
    """Every CRD in crds/ on the cluster, Established: the one way the tests install them.

    Server-side apply with ``--force-conflicts``: a warm cluster may hold CRDs from an older
    checkout (or owned by a Helm release), and an old schema prunes the fields it does not
    know from every object written through it, so the current schema must win.
    """
    kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    kubectl.run("wait", "--for=condition=Established", "-f", str(CRDS), "--timeout=60s")
