"""Route 53 provider against moto's server (the Route 53 API on 127.0.0.1:15000).

Every test gets a hosted zone of its own (the ``route53_zone`` fixture), deleted afterwards.
"""

from __future__ import annotations

import pytest

from dns_handoff import DnsError, RecordSet, RecordSetConflict, Route53Provider


def test_upsert_reads_back_with_its_ttl_and_values_and_is_insync(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    change = route53_zone.upsert([RecordSet(name, "A", 60, ("127.0.0.11", "127.0.0.12"))])
    assert change.startswith("/change/")
    assert route53_zone.wait_in_sync(change, timeout=5) < 5
    assert route53_zone.get(name, "A") == RecordSet(name, "A", 60, ("127.0.0.11", "127.0.0.12"))
    assert route53_zone.records(f"other.{route53_zone.zone}", "A") == []


def test_weighted_sets_are_read_back_with_their_set_ids_and_weights(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    blue = RecordSet(name, "A", 30, ("127.0.0.11",), set_id="blue", weight=100)
    green = RecordSet(name, "A", 30, ("127.0.0.12",), set_id="green", weight=0)
    route53_zone.upsert([blue, green])
    assert sorted(route53_zone.records(name, "A"), key=lambda rs: rs.set_id or "") == [blue, green]
    assert route53_zone.get(name, "A", set_id="green") == green
    assert route53_zone.get(name, "A") is None  # no plain set beside the weighted ones


def test_set_weights_changes_weights_and_keeps_values_and_ttl(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    blue = RecordSet(name, "A", 30, ("127.0.0.11",), set_id="blue", weight=100)
    green = RecordSet(name, "A", 30, ("127.0.0.12",), set_id="green", weight=0)
    route53_zone.upsert([blue, green])
    route53_zone.wait_in_sync(route53_zone.set_weights(name, "A", {"blue": 75, "green": 25}), timeout=5)
    after = {rs.set_id: rs for rs in route53_zone.records(name, "A")}
    assert after == {"blue": blue.with_(weight=75), "green": green.with_(weight=25)}
    with pytest.raises(DnsError, match=r"no weighted set \['purple'\]"):
        route53_zone.set_weights(name, "A", {"purple": 1})


def test_replace_turns_a_plain_set_into_weighted_sets_and_back_in_one_change(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    plain = RecordSet(name, "A", 60, ("127.0.0.11",))
    weighted = [
        RecordSet(name, "A", 60, ("127.0.0.11",), set_id="n1", weight=90),
        RecordSet(name, "A", 60, ("127.0.0.12",), set_id="n2", weight=10),
    ]
    route53_zone.upsert([plain])
    route53_zone.wait_in_sync(route53_zone.replace([plain], weighted), timeout=5)
    assert sorted(route53_zone.records(name, "A"), key=lambda rs: rs.set_id or "") == weighted
    route53_zone.wait_in_sync(route53_zone.replace(weighted, [plain]), timeout=5)
    assert route53_zone.records(name, "A") == [plain]


def test_replace_refuses_to_create_over_a_set_that_exists(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    there = RecordSet(name, "A", 60, ("127.0.0.11",))
    route53_zone.upsert([there])
    with pytest.raises(RecordSetConflict, match=r"holds .* 127\.0\.0\.11, not \(none\) as read"):
        route53_zone.replace([], [RecordSet(name, "A", 60, ("127.0.0.12",))])
    assert route53_zone.records(name, "A") == [there]


def test_replace_refuses_a_set_whose_weight_changed_since_it_was_read(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    read = [
        RecordSet(name, "A", 60, ("127.0.0.11",), set_id="n1", weight=100),
        RecordSet(name, "A", 60, ("127.0.0.12",), set_id="n2", weight=0),
    ]
    route53_zone.upsert(read)
    route53_zone.set_weights(name, "A", {"n1": 50, "n2": 50})  # somebody else's change
    with pytest.raises(RecordSetConflict, match="as read"):
        route53_zone.replace(read, [rs.with_(weight=100 - rs.weight) for rs in read])
    assert {rs.set_id: rs.weight for rs in route53_zone.records(name, "A")} == {"n1": 50, "n2": 50}


def test_names_outside_the_hosted_zone_are_refused(route53_zone: Route53Provider) -> None:
    with pytest.raises(DnsError, match="outside the hosted zone"):
        route53_zone.upsert([RecordSet("app.example.org.", "A", 60, ("127.0.0.11",))])


def test_the_zone_name_is_read_from_the_hosted_zone_when_not_given(route53_zone: Route53Provider) -> None:
    again = Route53Provider(route53_zone.hosted_zone_id, client=route53_zone.client)
    assert again.zone == route53_zone.zone
