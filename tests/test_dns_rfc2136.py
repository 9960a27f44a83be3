"""RFC 2136 provider against the real BIND on 127.0.0.1:15353 (zone nxnw.test.).

Every test works on a name of its own (``t-<uuid>.nxnw.test.``) and deletes it afterwards,
so tests never see each other's records and the zone is left as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dns_handoff import (
    DnsError,
    NotInSync,
    RecordSet,
    RecordSetConflict,
    Rfc2136Provider,
    WeightsUnsupported,
    answer,
)
from dns_handoff.rfc2136 import serial_at_least
from nxnw.services import endpoints as ep

SERVER = f"{ep.HOST}:{ep.BIND_DNS}"


@pytest.fixture
def name(bind_dns: Rfc2136Provider) -> Iterator[str]:
    """A record name no other test uses; whatever the test left there is deleted."""
    fresh = f"t-{uuid.uuid4().hex[:12]}.{ep.BIND_ZONE}"
    yield fresh
    left = bind_dns.records(fresh, "A")
    if left:
        bind_dns.delete(left)


def test_signed_update_changes_what_a_real_query_answers(bind_dns: Rfc2136Provider, name: str) -> None:
    assert answer(SERVER, name, "A") == []
    change = bind_dns.upsert([RecordSet(name, "A", 7, ("127.0.0.21", "127.0.0.22"))])
    bind_dns.wait_in_sync(change, timeout=5)
    assert answer(SERVER, name, "A") == ["127.0.0.21", "127.0.0.22"]
    assert bind_dns.get(name, "A") == RecordSet(name, "A", 7, ("127.0.0.21", "127.0.0.22"))


@pytest.mark.parametrize(
    ("key_name", "reason"),
    [(ep.BIND_TSIG_NAME, "BADSIG"), ("not-our-key.", "BADKEY")],
    ids=["wrong-secret", "unknown-key"],
)
def test_update_with_a_wrong_tsig_key_is_refused_naming_zone_and_reason(
    bind_dns: Rfc2136Provider, name: str, key_name: str, reason: str
) -> None:
    wrong_secret = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE="
    impostor = Rfc2136Provider(ep.BIND_ZONE, SERVER, key_name, wrong_secret)
    with pytest.raises(DnsError) as refused:
        impostor.upsert([RecordSet(name, "A", 5, ("127.0.0.66",))])
    message = str(refused.value)
    assert ep.BIND_ZONE in message and reason in message, message
    assert answer(SERVER, name, "A") == []  # nothing was changed


def test_wait_in_sync_returns_once_every_server_has_the_updates_serial(bind_dns: Rfc2136Provider, name: str) -> None:
    before = bind_dns.serial()
    change = bind_dns.upsert([RecordSet(name, "A", 5, ("127.0.0.23",))])
    zone, _, serial = change.rpartition("@")
    assert zone == ep.BIND_ZONE and serial_at_least(int(serial), before + 1)
    # The same server listed twice stands in for a primary and its secondary.
    both = Rfc2136Provider(ep.BIND_ZONE, SERVER, ep.BIND_TSIG_NAME, ep.BIND_TSIG_SECRET, authoritative=[SERVER, SERVER])
    assert both.wait_in_sync(change, timeout=5) < 5


def test_wait_in_sync_gives_up_at_its_deadline_naming_the_lagging_server(bind_dns: Rfc2136Provider) -> None:
    future = f"{ep.BIND_ZONE}@{(bind_dns.serial() + 1000) % 2**32}"
    with pytest.raises(NotInSync, match=rf"{ep.BIND_DNS}: serial \d+"):
        bind_dns.wait_in_sync(future, timeout=0.5)


def test_serials_compare_across_the_32_bit_wrap() -> None:
    assert serial_at_least(5, 2**32 - 10)  # 5 comes after 4294967286 (RFC 1982)
    assert not serial_at_least(2**32 - 10, 5)
    assert serial_at_least(7, 7)


def test_replace_refuses_a_record_that_changed_since_it_was_read(bind_dns: Rfc2136Provider, name: str) -> None:
    read = RecordSet(name, "A", 5, ("127.0.0.24",))
    bind_dns.upsert([read])
    bind_dns.upsert([RecordSet(name, "A", 5, ("127.0.0.25",))])  # somebody else's change
    with pytest.raises(RecordSetConflict, match="NXRRSET"):
        bind_dns.replace([read], [RecordSet(name, "A", 5, ("127.0.0.26",))])
    assert answer(SERVER, name, "A") == ["127.0.0.25"]


def test_replace_refuses_to_create_over_a_record_that_appeared(bind_dns: Rfc2136Provider, name: str) -> None:
    bind_dns.upsert([RecordSet(name, "A", 5, ("127.0.0.27",))])
    with pytest.raises(RecordSetConflict, match="YXRRSET"):
        bind_dns.replace([], [RecordSet(name, "A", 5, ("127.0.0.28",))])
    assert answer(SERVER, name, "A") == ["127.0.0.27"]


def test_names_outside_the_zone_are_refused(bind_dns: Rfc2136Provider) -> None:
    with pytest.raises(DnsError, match="outside the zone"):
        bind_dns.upsert([RecordSet("app.example.org.", "A", 5, ("127.0.0.29",))])


def test_weights_are_refused_because_bind_has_no_weighted_routing(bind_dns: Rfc2136Provider, name: str) -> None:
    with pytest.raises(WeightsUnsupported, match="no weighted routing"):
        bind_dns.set_weights(name, "A", {"n1": 90, "n2": 10})
    with pytest.raises(WeightsUnsupported, match="set id and weight"):
        bind_dns.upsert([RecordSet(name, "A", 5, ("127.0.0.30",), set_id="n2", weight=10)])
    assert answer(SERVER, name, "A") == []
