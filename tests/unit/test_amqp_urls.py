"""Broker address lists: the order is the failover order, mistakes are named, passwords hidden."""

from __future__ import annotations

import pika
import pytest

from roger.core.amqp_urls import AmqpUrlError, parse_amqp_urls, redact

pytestmark = pytest.mark.unit

U = "amqp://guest:s3cret@127.0.0.1"


def test_one_url_is_returned_unchanged() -> None:
    assert parse_amqp_urls(f"{U}:5672/%2F") == (f"{U}:5672/%2F",)


def test_comma_separated_urls_keep_their_order() -> None:
    text = f"{U}:5683/%2F, {U}:5681/%2F,amqps://a:b@other.example:5671/v?heartbeat=5"
    assert parse_amqp_urls(text) == (
        f"{U}:5683/%2F",
        f"{U}:5681/%2F",
        "amqps://a:b@other.example:5671/v?heartbeat=5",
    )


def test_several_hosts_share_credentials_vhost_and_query() -> None:
    text = "amqp://u:p@n1:5681,n2:5682 , n3/%2F?heartbeat=30"
    assert parse_amqp_urls(text) == (
        "amqp://u:p@n1:5681/%2F?heartbeat=30",
        "amqp://u:p@n2:5682/%2F?heartbeat=30",
        "amqp://u:p@n3/%2F?heartbeat=30",
    )


def test_both_forms_mix_and_ipv6_hosts_work() -> None:
    text = "amqp://u:p@[::1]:5681,n2,amqp://x:y@n3:5683"
    assert parse_amqp_urls(text) == (
        "amqp://u:p@[::1]:5681",
        "amqp://u:p@n2",
        "amqp://x:y@n3:5683",
    )


def test_a_comma_inside_a_password_before_the_host_is_kept() -> None:
    assert parse_amqp_urls("amqp://u:p,q@n1:5672/%2F") == ("amqp://u:p,q@n1:5672/%2F",)


def test_every_result_is_accepted_by_pika() -> None:
    urls = parse_amqp_urls("amqp://u:p@n1:5681,n2:5682/vh?heartbeat=7")
    params = [pika.URLParameters(u) for u in urls]
    assert [(p.host, p.port, p.virtual_host, p.heartbeat) for p in params] == [
        ("n1", 5681, "vh", 7),
        ("n2", 5682, "vh", 7),
    ]
    assert all(p.credentials.password == "p" for p in params)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no broker address"),
        (" , ", "no broker address"),
        ("127.0.0.1:5672", "must start with amqp://"),
        ("http://u:p@h/", "must start with amqp://"),
        (f"{U}:5681,", "empty host"),
        (f"{U}:5681,,{U}:5682", "empty host"),
        (f"{U}:99999/%2F", "port outside"),
        (f"{U}:0/%2F", "port outside"),
        (f"{U}:/%2F", "port outside"),
        (f"{U}:5681,h 2", "not a host[:port]"),
        (f"{U}:5681/%2F,{U}:5681/%2F", "given twice"),
        (f"{U}:5681/a/b", "one path segment"),
        (f"{U}:5681/%2F#x", "fragment"),
    ],
)
def test_mistakes_are_refused_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(AmqpUrlError, match="^.*" + says.replace("[", r"\[").replace("]", r"\]")):
        parse_amqp_urls(text)


def test_errors_never_show_the_password() -> None:
    for text in (f"{U}:99999/%2F", f"{U}:1,{U}:1", "amqp://u:hunter2@h:1,bad host"):
        with pytest.raises(AmqpUrlError) as info:
            parse_amqp_urls(text)
        assert "s3cret" not in str(info.value) and "hunter2" not in str(info.value)


def test_redact_hides_only_the_password() -> None:
    assert redact("amqp://guest:pw@h:1/%2F") == "amqp://guest:***@h:1/%2F"
    assert redact("amqp://h:1/%2F") == "amqp://h:1/%2F"
