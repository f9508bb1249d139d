"""The kopf settings the operator runs with (roger_operator.cli.settings_for)."""

from __future__ import annotations

import pytest

from roger_operator.cli import parse_args, settings_for

pytestmark = pytest.mark.unit


def test_a_timer_in_flight_holds_a_deleted_partition_for_about_a_second_not_a_minute() -> None:
    settings = settings_for(parse_args(["--all-namespaces"]))
    assert settings.background.cancellation_polling <= 2.0


def test_finalizer_and_progress_keep_roger_names() -> None:
    settings = settings_for(parse_args(["--all-namespaces"]))
    assert settings.persistence.finalizer == "roger.dev/cleanup"
    assert settings.posting.enabled is False


def test_kopf_waits_for_its_own_patches_long_enough_not_to_reconcile_twice() -> None:
    """kopf's default 5 s made it run the reconcile a second time for most Partitions when
    500 were created at once (the cli's CONSISTENCY_TIMEOUT_SECONDS says why)."""
    settings = settings_for(parse_args(["--all-namespaces"]))
    assert settings.persistence.consistency_timeout >= 30
