"""The project's images, built here (hack/images.sh: podman, no registry), once a session.

A machine where podman cannot build or run them fails these tests: the images are what
users deploy, so "cannot check them here" is a failure, not a skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "hack" / "containers" / "containers.conf"


@dataclass(frozen=True)
class Images:
    worker: str
    operator: str
    example: str


def podman_env() -> dict[str, str]:
    """The environment for podman: the project's runtime and ulimit settings."""
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def images() -> Images:
    subprocess.run(["bash", "hack/images.sh", "build"], cwd=ROOT, check=True, timeout=1200)
    out = subprocess.run(
        ["bash", "hack/images.sh", "names"], cwd=ROOT, check=True, capture_output=True, text=True
    )
    worker, operator, example = out.stdout.split()
    return Images(worker=worker, operator=operator, example=example)


@pytest.fixture
def container_name(unique_name: str) -> Iterator[str]:
    """A container name of the test's own, removed afterwards whatever happened."""
    yield unique_name
    podman("rm", "--force", "--time", "5", unique_name, check=False)
