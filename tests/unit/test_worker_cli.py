"""`roger` on bad input: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from roger import cli
from roger.cli import top as top_cli
from roger.cli import worker as worker_cli
from roger.core.config import ConfigError, parse_config
from roger.version import package_version
from roger_operator import cli as operator_cli
from tests.integration.support import env, roger

pytestmark = pytest.mark.unit
URL = "amqp://guest:guest@127.0.0.1:1/%2F"  # never reached: input is checked first


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["worker", "--queue", "default=1", "--jobs", "tests.jobs.basic"], "partition"),
        (["worker", "--partition", "p", "--queue", "default", "--jobs", "x"], "NAME=MAX"),
        (["worker", "--partition", "p", "--queue", "default=x", "--jobs", "x"], "integer"),
        (["worker", "--partition", "P!", "--queue", "d=1", "--jobs", "x"], "partition name"),
        (["worker", "--partition", "p", "--queue", "d=1"], "jobs module"),
        (["worker", "--partition", "p", "--queue", "d=1", "--jobs", "no.such.mod"], "import"),
        (["worker", "--partition", "p", "--queue", "d=1", "--jobs", "json"], "no @roger.job"),
        (
            [
                "worker",
                "--partition",
                "p",
                "--queue",
                "d=1",
                "--jobs",
                "tests.jobs.basic",
                "--retry-levels",
                "1,x",
            ],
            "retry levels",
        ),
        (
            [
                "worker",
                "--partition",
                "p",
                "--queue",
                "d=1",
                "--jobs",
                "tests.jobs.basic",
                "--callback",
                "nope",
            ],
            "callback",
        ),
        (
            [
                "worker",
                "--partition",
                "p",
                "--queue",
                "d=1",
                "--jobs",
                "tests.jobs.basic",
                "--callback",
                "tests.jobs.callbacks:Missing",
            ],
            "not found",
        ),
        (["worker", "--partition", "p", "--config", "/nonexistent.yaml"], "cannot read"),
        (["worker", "--bogus"], "unrecognized"),
        (["enqueue", "p", "tests.jobs.basic:ok", "{not json"], "not JSON"),
        (["enqueue", "p", "not a job name"], "module:function"),
        (["frobnicate"], "invalid choice"),
        (
            ["--log-level", "loud", "info", "p"],
            "log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL: 'loud'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    r = roger(*args, amqp_url=URL)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("usage:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [("ROGER_LOG_LEVEL", "verbose", "log level"), ("ROGER_LOG_FORMAT", "xml", "log format")],
)
def test_a_bad_log_setting_from_the_environment_is_a_usage_error(
    variable: str, value: str, needle: str
) -> None:
    r = roger("info", "p", amqp_url=URL, env=env(**{variable: value}))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0] and repr(value) in lines[0], r.stderr


@pytest.mark.parametrize("level", ["warn", "Debug", "FATAL"])
def test_log_levels_are_logging_s_names_in_any_case(level: str) -> None:
    environ = env(ROGER_LOG_LEVEL=level)
    environ.pop("ROGER_AMQP_URL", None)
    r = roger("enqueue", "p", "tests.jobs.basic:ok", env=environ)  # stops at the missing URL
    assert r.returncode == 2 and "ROGER_AMQP_URL" in r.stderr and "log level" not in r.stderr


def _every_parser(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out += _every_parser(child)
    return out


def test_every_flag_of_every_command_says_what_it_does() -> None:
    """`--help` is the reference users read first: no flag of `roger` (and its verbs),
    `kubectl roger top` or `roger-operator` without a text."""
    parsers = [
        *_every_parser(cli._parser()),
        ("top", top_cli._parser()),
        ("roger-operator", operator_cli.arg_parser()),
    ]
    bare = [
        f"{prog} {action.option_strings[-1]}"
        for prog, parser in parsers
        for action in parser._actions
        if action.option_strings and not action.help and action.dest != "help"
    ]
    assert bare == []
    assert len(parsers) > 12  # the walk reached the verbs


def test_no_broker_url_is_a_usage_error() -> None:
    environ = env()
    environ.pop("ROGER_AMQP_URL", None)
    r = roger("enqueue", "p", "tests.jobs.basic:ok", env=environ)
    assert r.returncode == 2 and "ROGER_AMQP_URL" in r.stderr


def test_config_file_is_overridden_by_flags(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(
        "partition: fromfile\nqueues: {default: 4, mail: 0}\njobs: [tests.jobs.basic]\n"
        "retry_levels: [2, 4]\ncallbacks:\n  - class: tests.jobs.callbacks:Recorder\n"
        "    config: {path: /tmp/x}\n"
    )
    parser = cli._parser()
    opts = parser.parse_args(["worker", "--config", str(path), "--partition", "flag"])
    config = worker_cli.worker_config(opts)
    assert config.partition == "flag"
    assert dict(config.queues) == {"default": 4, "mail": 0}
    assert config.retry_levels == (2, 4)
    assert config.callbacks[0].config == {"path": "/tmp/x"}
    opts = parser.parse_args(
        ["worker", "--config", str(path), "--queue", "default=1", "--retry-levels", "1"]
    )
    config = worker_cli.worker_config(opts)
    assert dict(config.queues) == {"default": 1} and config.retry_levels == (1,)
    assert isinstance(opts, argparse.Namespace)


def test_job_processes_from_the_file_or_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text("partition: p\nqueues: {default: 8}\njobs: [m]\njob_processes: 2\n")
    parser = cli._parser()
    assert (
        worker_cli.worker_config(parser.parse_args(["worker", "--config", str(path)])).job_processes
        == 2
    )
    opts = parser.parse_args(["worker", "--config", str(path), "--job-processes", "8"])
    assert worker_cli.worker_config(opts).job_processes == 8
    path.write_text("partition: p\nqueues: {default: 8}\njobs: [m]\n")
    assert (
        worker_cli.worker_config(parser.parse_args(["worker", "--config", str(path)])).job_processes
        is None
    )


@pytest.mark.parametrize("bad", [0, -1, "2", True, 1025])
def test_job_processes_must_be_a_sensible_count(bad: object) -> None:
    data = {"partition": "p", "queues": {"default": 1}, "jobs": ["m"], "job_processes": bad}
    with pytest.raises(ConfigError, match=r"job_processes must be an integer 1\.\.1024"):
        parse_config(data)


def test_extra_observers_hook_point_exists() -> None:
    assert callable(worker_cli.make_observers) and callable(worker_cli._extra_observers)


def test_version_is_the_installed_package_version() -> None:
    done = roger("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"roger {package_version()}" != "roger unknown"


@pytest.mark.parametrize(
    ("callback", "why"),
    [
        ("subprocess:Popen", "class Popen implements none of the hooks"),
        ("collections:Counter", "class Counter implements none of the hooks"),
        ("os:getpid", "it is a built-in function, not a class"),
    ],
)
def test_a_callback_that_is_not_a_callback_class_stops_the_worker(
    callback: str, why: str, tmp_path: Path
) -> None:
    """Refused before the broker is contacted and before anything is called: exit 2, one
    line naming the callback and why."""
    marker = tmp_path / "ran"
    r = roger(
        "worker",
        "--partition",
        "p",
        "--queue",
        "default=1",
        "--jobs",
        "tests.jobs.basic",
        "--callback",
        "tests.jobs.callbacks:Recorder",
        "--callback",
        callback,
        amqp_url=URL,
        env=env(ROGER_TEST_HOOKS=str(marker)),
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"roger: callback {callback} rejected: {why}"), r.stderr
    assert not marker.exists()
