"""Callbacks run only callback code: a callback path must name a class with at least one of
the five hooks, checked without calling anything; config values may come from the
environment (Secrets, by reference), and a refusal is reported to the Partition."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from roger.core import rejections
from roger.core.config import ConfigError, parse_callback, parse_config, resolve_callback_config
from roger.core.hooks import callback_refusal
from roger.core.kube_events import timestamp
from roger.kube.client import ApiFailure
from roger.kube.rejection import report_callback_rejected
from roger.worker.callbacks import CallbackRejected, check, instantiate, resolve_class
from roger_operator.builders.callback_secrets import env_entries, reference_problem
from roger_operator.builders.config import config_hash, config_text, render_config
from roger_operator.builders.manifests import build_children
from roger_operator.builders.model import parse_callback as parse_callback_resource
from roger_operator.builders.model import parse_partition

pytestmark = pytest.mark.unit
CALLED: list[str] = []


class Meta(type):
    def __getattr__(cls, name: str) -> Any:
        CALLED.append(f"metaclass getattr {name}")
        return lambda *a: None

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        CALLED.append("metaclass call")
        return super().__call__(*args, **kwargs)


class NoHooksButMagic(metaclass=Meta):
    """Has no hook, but its metaclass would answer any attribute if asked."""


class PlainWithOneHook:
    """A plain class (no base) with one hook: a callback, as today."""

    def __init__(self, **config: Any) -> None:
        CALLED.append("init")
        self.config = config

    def on_error(self, partition: str, job: Any, error: Any, stack: Any, state: Any) -> None:
        pass


class StaticHook:
    @staticmethod
    def after_run(partition: str, job: Any, result: Any, state: Any) -> None:
        pass


def a_function() -> None:
    CALLED.append("function")


HERE = __name__


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("subprocess:Popen", "class Popen implements none of the hooks"),
        ("collections:Counter", "class Counter implements none of the hooks"),
        ("os:getpid", "it is a built-in function, not a class"),
        ("builtins:eval", "it is a built-in function, not a class"),
        ("os:path", "it is a module, not a class"),
        ("roger:Callback", "class Callback implements none of the hooks"),
        (f"{HERE}:a_function", "it is a function, not a class"),
        (f"{HERE}:HERE", "it is a str object, not a class"),
        (f"{HERE}:NoHooksButMagic", "implements none of the hooks"),
        (f"{HERE}:Missing", "'Missing' not found in module"),
        ("no_such_module_xyz:Thing", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_what_is_not_a_callback_class_is_refused_before_anything_is_called(
    path: str, why: str
) -> None:
    CALLED.clear()
    with pytest.raises(CallbackRejected) as info:
        resolve_class(path)
    assert str(info.value) == f"callback {path} rejected: {info.value.why}"
    assert why in info.value.why
    assert CALLED == []  # no metaclass hook, function or constructor ran


@pytest.mark.parametrize(
    "path",
    [
        "tests.jobs.callbacks:Recorder",  # a roger.Callback subclass
        "tests.jobs.callbacks:HangsAfter",  # a plain class with one hook
        f"{HERE}:PlainWithOneHook",
        f"{HERE}:StaticHook",
    ],
)
def test_callback_classes_resolve_without_being_called(path: str) -> None:
    CALLED.clear()
    cls = resolve_class(path)
    assert isinstance(cls, type) and callback_refusal(cls) is None
    assert CALLED == []


def test_instantiate_reads_secret_values_from_the_environment() -> None:
    CALLED.clear()
    config = {"channel": "#jobs", "token": {"valueFrom": {"env": "ROGER_CALLBACK_0_1"}}}
    obj = instantiate(f"{HERE}:PlainWithOneHook", config, {"ROGER_CALLBACK_0_1": "t0k3n"})
    assert obj.config == {"channel": "#jobs", "token": "t0k3n"}
    assert CALLED == ["init"]


def test_a_missing_variable_names_the_variable_never_a_value() -> None:
    spec = parse_callback(
        {"class": f"{HERE}:PlainWithOneHook", "config": {"token": {"valueFrom": {"env": "TOK"}}}}
    )
    with pytest.raises(CallbackRejected, match="environment variable TOK is not set"):
        check(spec, {})
    assert check(spec, {"TOK": "x"}) is PlainWithOneHook


@pytest.mark.parametrize(
    "value",
    [
        {"valueFrom": {"env": "A"}, "other": 1},
        {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},  # the operator's form
        {"valueFrom": {"env": "1BAD"}},
        {"valueFrom": "A"},
    ],
)
def test_malformed_references_are_config_errors(value: Any) -> None:
    with pytest.raises(ConfigError, match="config token"):
        parse_callback({"class": "m:C", "config": {"token": value}})


def test_plain_values_pass_through() -> None:
    assert resolve_callback_config({"a": 1, "b": {"x": 2}}, {}) == {"a": 1, "b": {"x": 2}}


# -- the operator: values from Secrets, by reference ---------------------------------------


def _partition() -> dict[str, Any]:
    return {
        "metadata": {"name": "tenant-a", "namespace": "team", "uid": "u-1", "generation": 1},
        "spec": {
            "amqp": {"secretRef": {"name": "rabbitmq"}},
            "worker": {"image": "img:1"},
            "jobs": ["myapp.jobs"],
            "queues": [{"name": "default"}],
            "callbacks": ["audit", "slack"],
        },
    }


def _callback(name: str, config: dict[str, Any]) -> Any:
    return parse_callback_resource(
        {"metadata": {"name": name}, "spec": {"module": "myapp.callbacks:Audit", "config": config}}
    )


AUDIT = _callback("audit", {"channel": "#a"})
SLACK = _callback(
    "slack",
    {"channel": "#b", "token": {"valueFrom": {"secretKeyRef": {"name": "slack", "key": "tok"}}}},
)


def test_secret_values_become_env_from_secret_and_only_names_in_the_config_map() -> None:
    spec = parse_partition(_partition())
    manifests, _ = build_children(spec, [AUDIT, SLACK])
    kinds = {m["kind"]: m for m in manifests}
    text = kinds["ConfigMap"]["data"]["worker.yaml"]
    config = parse_config(yaml.safe_load(text))
    assert dict(config.callbacks[1].config) == {
        "channel": "#b",
        "token": {"valueFrom": {"env": "ROGER_CALLBACK_1_1"}},
    }
    assert "slack" not in text.replace("#b", "")  # not even the Secret's name
    env = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "ROGER_CALLBACK_1_1",
        "valueFrom": {"secretKeyRef": {"name": "slack", "key": "tok"}},
    } in env
    assert env_entries([AUDIT]) == []


@pytest.mark.parametrize(
    "value",
    [
        {"valueFrom": {"secretKeyRef": {"name": "s"}}},
        {"valueFrom": {"secretKeyRef": {"name": "S!", "key": "k"}}},
        {"valueFrom": {"configMapKeyRef": {"name": "s", "key": "k"}}},
        {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}, "default": "x"},
    ],
)
def test_malformed_secret_references_are_a_problem(value: Any) -> None:
    assert "spec.config.token" in (reference_problem(_callback("c", {"token": value})) or "")


# -- reporting a rejection -------------------------------------------------------------------


def test_the_worker_digest_is_the_pod_template_hash() -> None:
    text = config_text(render_config(parse_partition(_partition()), [AUDIT, SLACK]))
    assert rejections.config_digest(text) == config_hash(text)


def _event(digest: str, seen: float, uid: str = "u-1") -> dict[str, Any]:
    body = rejections.rejection_event(
        rejections.Regarding("team", "tenant-a", uid),
        "callback x:Y rejected: no",
        digest,
        "pod",
        seen,
    )
    return body


def test_only_a_fresh_rejection_of_the_current_config_counts() -> None:
    now = time.time()
    assert rejections.current_rejection([_event("d1", now - 5)], "u-1", "d1", now)
    assert rejections.current_rejection([_event("d0", now - 5)], "u-1", "d1", now) is None
    assert rejections.current_rejection([_event("d1", now - 5, "old")], "u-1", "d1", now) is None
    stale = now - rejections.FRESH_SECONDS - 5
    assert rejections.current_rejection([_event("d1", stale)], "u-1", "d1", now) is None
    assert timestamp(now)  # the Event's clock is the worker's


class FakeEvents:
    """Records the calls; the real API server is in the e2e test."""

    def __init__(self, exists: bool) -> None:
        self.exists = exists
        self.calls: list[tuple[str, Any]] = []

    def get_partition(self, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"uid": "u-1"}}

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body))
        if self.exists:
            raise ApiFailure("conflict", "exists", 409)
        return body

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", (name, patch)))
        return patch

    def close(self) -> None:
        self.calls.append(("close", None))


@pytest.mark.parametrize("exists", [False, True])
def test_the_rejection_becomes_one_event_per_config(exists: bool) -> None:
    config = parse_config(
        {"partition": "p", "queues": {"default": 1}, "jobs": ["m"], "kube": {"name": "tenant-a"}}
    )
    api = FakeEvents(exists)
    assert report_callback_rejected(
        config, "callback a:B rejected: no", "text", env={"POD_NAMESPACE": "team"}, api=api
    )
    kind, body = api.calls[0]
    assert kind == "create" and body["reason"] == "CallbackRejected" and body["type"] == "Warning"
    assert body["involvedObject"]["uid"] == "u-1"
    digest = rejections.config_digest("text")
    assert body["metadata"]["annotations"] == {"roger.dev/config-hash": digest}
    if exists:
        assert api.calls[1][0] == "patch"
        assert api.calls[1][1][0] == f"tenant-a.callback-rejected.{digest}"
    assert api.calls[-1][0] == "close"


def test_no_namespace_no_event() -> None:
    config = parse_config({"partition": "p", "queues": {"default": 1}, "jobs": ["m"]})
    assert not report_callback_rejected(config, "x", None, env={}, api=FakeEvents(False))
