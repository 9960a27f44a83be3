"""The hand-off steps against the real BIND (RFC 2136) and moto's Route 53 server.

Each test works on a name of its own: a fresh ``t-<uuid>.nxnw.test.`` on BIND (deleted
afterwards), a fresh hosted zone on moto. N1 is 127.0.0.11, N2 is 127.0.0.12, as in the
demo zone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from dns_handoff import (
    BudgetVerdict,
    DnsError,
    ErrorBudgetExceeded,
    Handoff,
    RecordSet,
    RecordSetConflict,
    Rfc2136Provider,
    RollbackConflict,
    Route53Provider,
    VerifyFailed,
    WeightsUnsupported,
    answer,
    lower_ttl,
    switch,
    verify,
)
from nxnw.services import endpoints as ep

SERVER = f"{ep.HOST}:{ep.BIND_DNS}"
N1, N2 = ["127.0.0.11"], ["127.0.0.12"]


@pytest.fixture
def app(bind_dns: Rfc2136Provider) -> Iterator[str]:
    """A name of this test's own on BIND pointing at N1 with a 3 s TTL; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}.{ep.BIND_ZONE}"
    bind_dns.wait_in_sync(bind_dns.upsert([RecordSet(name, "A", 3, tuple(N1))]), timeout=5)
    yield name
    left = bind_dns.records(name, "A")
    if left:
        bind_dns.delete(left)


def verbs(handoff: Handoff) -> list[str]:
    return [f"{s.verb}:{s.outcome}" for s in handoff.steps]


def test_lower_ttl_switch_verify_rollback_restores_ttl_and_values_exactly(bind_dns: Rfc2136Provider, app: str) -> None:
    before = bind_dns.records(app, "A")
    started = time.monotonic()
    handoff = lower_ttl(bind_dns, app, 1)
    assert time.monotonic() - started >= 3  # the old TTL was waited out
    assert bind_dns.get(app, "A") == RecordSet(app, "A", 1, tuple(N1))

    switch(bind_dns, app, N1, N2, error_budget_check=lambda: True, handoff=handoff)
    assert handoff.verify(SERVER, N2) == N2
    assert answer(SERVER, app, "A") == N2

    handoff.rollback()
    assert bind_dns.records(app, "A") == before  # TTL 3 and N1, as saved
    verify(SERVER, app, N1)
    assert verbs(handoff) == [
        "save:ok", "lower-ttl:ok", "wait-in-sync:ok", "wait-old-ttl:ok",
        "switch:ok", "wait-in-sync:ok", "hold:ok", "verify:ok",
        "rollback:ok", "wait-in-sync:ok",
    ]
    assert all(s.finished_at is not None and s.finished_at >= s.started_at for s in handoff.steps)


def test_lowering_a_ttl_that_was_never_higher_changes_nothing_and_waits_nothing(bind_dns: Rfc2136Provider, app: str) -> None:
    handoff = Handoff(bind_dns, app)  # its saved copy has TTL 3: no resolver can cache the name for longer
    assert handoff.lower_ttl(10) == 0.0
    assert bind_dns.get(app, "A") == RecordSet(app, "A", 3, tuple(N1))


def test_a_wall_clock_step_forward_does_not_cut_the_wait_for_the_old_ttl_short(bind_dns: Rfc2136Provider,
                                                                              app: str) -> None:
    """The wait for the old TTL was timed by the wall clock: a step forward (an NTP
    correction) right after the lowered TTL was in sync ended it at once, and the switch
    could follow while resolvers still held the TTL-3 answer. Timed by the monotonic clock now."""
    handoff = Handoff(bind_dns, app)

    def stepped() -> float:  # an hour ahead from the moment the lowering is in sync
        in_sync = (handoff.ttl_lowering or {}).get("in_sync_at") is not None
        return time.time() + (3600.0 if in_sync else 0.0)

    handoff.wall = stepped
    started = time.monotonic()
    waited = handoff.lower_ttl(1)
    assert waited >= 2.9 and time.monotonic() - started >= 3  # the whole old TTL (3 s), as without the step
    assert verbs(handoff)[-1] == "wait-old-ttl:ok"


class Killed(Exception):
    """Stands for the orchestrator being killed right after a persisted step."""


def test_a_resumed_lowering_waits_out_what_remains_of_the_old_ttl(bind_dns: Rfc2136Provider) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}.{ep.BIND_ZONE}"
    bind_dns.wait_in_sync(bind_dns.upsert([RecordSet(name, "A", 6, tuple(N1))]), timeout=5)
    try:
        saved: list[dict] = []

        def persist_then_die_once_in_sync(doc: dict) -> None:
            saved.append(doc)  # durable, as the orchestrator's ZooKeeper copy is
            if (doc.get("ttl_lowering") or {}).get("in_sync_at") is not None:
                raise Killed()

        with pytest.raises(Killed):
            Handoff(bind_dns, name, persist=persist_then_die_once_in_sync).lower_ttl(1)
        assert bind_dns.get(name, "A") == RecordSet(name, "A", 1, tuple(N1))  # lowered, old TTL not waited out
        in_sync_at = saved[-1]["ttl_lowering"]["in_sync_at"]

        resumed = Handoff.from_dict(bind_dns, saved[-1])
        waited = resumed.lower_ttl(1)
        # A resolver may cache the TTL-6 answer until 6 s after the lowered TTL was in sync;
        # the resumed run must not go on before then (it used to return 0 at once).
        assert waited > 0
        assert time.time() >= in_sync_at + 6
        assert verbs(resumed)[-1] == "wait-old-ttl:ok"
    finally:
        bind_dns.delete(bind_dns.records(name, "A"))


def test_a_failed_error_budget_rolls_an_at_once_switch_back(bind_dns: Rfc2136Provider, app: str) -> None:
    handoff = Handoff(bind_dns, app)
    with pytest.raises(ErrorBudgetExceeded, match="5 % of N2's requests failed") as exceeded:
        handoff.switch(N1, N2, error_budget_check=lambda: BudgetVerdict(False, "5 % of N2's requests failed"))
    assert exceeded.value.percent == 100 and exceeded.value.rolled_back
    assert bind_dns.records(app, "A") == [RecordSet(app, "A", 3, tuple(N1))]
    verify(SERVER, app, N1)
    assert "hold:failed" in verbs(handoff) and verbs(handoff)[-2:] == ["rollback:ok", "wait-in-sync:ok"]


def test_an_error_budget_check_that_raises_counts_as_failed(bind_dns: Rfc2136Provider, app: str) -> None:
    def broken() -> bool:
        raise ConnectionError("metrics endpoint down")

    with pytest.raises(ErrorBudgetExceeded, match="ConnectionError: metrics endpoint down"):
        switch(bind_dns, app, N1, N2, error_budget_check=broken)
    verify(SERVER, app, N1)


def test_weighted_switch_on_bind_is_refused_before_anything_changes(bind_dns: Rfc2136Provider, app: str) -> None:
    handoff = Handoff(bind_dns, app)
    with pytest.raises(WeightsUnsupported, match="use mode='at_once'"):
        handoff.switch(N1, N2, mode="weighted")
    assert handoff.steps == [] and handoff.saved is None
    verify(SERVER, app, N1)


def test_switch_refuses_a_record_that_does_not_point_at_n1(bind_dns: Rfc2136Provider, app: str) -> None:
    with pytest.raises(DnsError, match="neither N1's"):
        switch(bind_dns, app, ["127.0.0.99"], N2)
    verify(SERVER, app, N1)


def test_switch_refuses_to_overwrite_a_record_changed_since_it_was_saved(bind_dns: Rfc2136Provider, app: str) -> None:
    handoff = Handoff(bind_dns, app)
    handoff.save()
    edited = RecordSet(app, "A", 10, tuple(N1))  # an operator raised the TTL: still N1, not what was saved
    bind_dns.upsert([edited])
    with pytest.raises(RecordSetConflict, match="changed outside the hand-off"):
        handoff.switch(N1, N2)
    assert bind_dns.records(app, "A") == [edited]


def test_rollback_refuses_to_delete_a_set_the_handoff_did_not_save_or_write(bind_dns: Rfc2136Provider, app: str) -> None:
    handoff = switch(bind_dns, app, N1, N2)
    bind_dns.upsert([RecordSet(app, "A", 3, ("127.0.0.99",))])  # somebody else's change
    with pytest.raises(RollbackConflict, match="127.0.0.99"):
        handoff.rollback()
    assert answer(SERVER, app, "A") == ["127.0.0.99"]


def test_verify_names_what_the_server_answered_instead(bind_dns: Rfc2136Provider, app: str) -> None:
    with pytest.raises(VerifyFailed, match=r"answers \['127.0.0.11'\], expected \['127.0.0.12'\]"):
        verify(SERVER, app, N2, within=0.3)


def test_a_handoff_survives_a_crash_through_its_serialised_form(bind_dns: Rfc2136Provider, app: str) -> None:
    first = switch(bind_dns, app, N1, N2)
    resumed = Handoff.from_dict(bind_dns, first.to_dict())
    resumed.rollback()
    assert bind_dns.records(app, "A") == [RecordSet(app, "A", 3, tuple(N1))]
    assert [s["verb"] for s in resumed.timeline()][:2] == ["save", "switch"]


# --- Route 53 (moto's server): weighted steps ---------------------------------------------


@pytest.fixture
def weighted_app(route53_zone: Route53Provider) -> tuple[str, list[RecordSet]]:
    """``app.<zone>`` as blue (N1, weight 100) / green (N2, weight 0) weighted sets, TTL 30."""
    name = f"app.{route53_zone.zone}"
    original = [
        RecordSet(name, "A", 30, tuple(N1), set_id="blue", weight=100),
        RecordSet(name, "A", 30, tuple(N2), set_id="green", weight=0),
    ]
    route53_zone.wait_in_sync(route53_zone.upsert(original), timeout=5)
    return name, original


def weights(provider: Route53Provider, name: str) -> dict[str | None, int | None]:
    return {rs.set_id: rs.weight for rs in provider.records(name, "A")}


def test_weighted_switch_failing_at_step_2_rolls_back_to_the_original_weights(
    route53_zone: Route53Provider, weighted_app: tuple[str, list[RecordSet]]
) -> None:
    name, original = weighted_app
    seen: list[dict[str | None, int | None]] = []

    def budget() -> BudgetVerdict:
        seen.append(weights(route53_zone, name))
        if len(seen) == 2:
            return BudgetVerdict(False, "N2 error rate 4.0 % > 1.0 %")
        return BudgetVerdict(True)

    handoff = Handoff(route53_zone, name, sync_timeout=5)
    with pytest.raises(ErrorBudgetExceeded, match="at 50 %: N2 error rate 4.0 %") as exceeded:
        handoff.switch(N1, N2, mode="weighted", steps=[10, 50, 100], error_budget_check=budget)
    assert exceeded.value.percent == 50
    assert seen == [{"blue": 90, "green": 10}, {"blue": 50, "green": 50}]  # each step held while judged
    assert sorted(route53_zone.records(name, "A"), key=lambda rs: rs.set_id or "") == original
    assert verbs(handoff)[-4:] == ["wait-in-sync:ok", "hold:failed", "rollback:ok", "wait-in-sync:ok"]


def test_weighted_switch_from_a_plain_record_ends_with_n2_at_full_weight_and_rolls_back(
    route53_zone: Route53Provider,
) -> None:
    name = f"app.{route53_zone.zone}"
    plain = RecordSet(name, "A", 30, tuple(N1))
    route53_zone.upsert([plain])
    checks = []
    handoff = switch(
        route53_zone, name, N1, N2, mode="weighted", steps=[25, 100],
        error_budget_check=lambda: checks.append(1) or True, hold_seconds=0.3,
    )
    assert len(checks) >= 2  # checked during each hold, and at its end
    assert weights(route53_zone, name) == {"nxnw-n1": 0, "nxnw-n2": 100}
    handoff.rollback()
    assert route53_zone.records(name, "A") == [plain]


def test_at_once_switch_on_route53_waits_for_insync(route53_zone: Route53Provider) -> None:
    name = f"app.{route53_zone.zone}"
    route53_zone.upsert([RecordSet(name, "A", 30, tuple(N1))])
    handoff = switch(route53_zone, name, N1, N2)
    assert route53_zone.records(name, "A") == [RecordSet(name, "A", 30, tuple(N2))]
    waits = [s for s in handoff.steps if s.verb == "wait-in-sync"]
    assert len(waits) == 1 and waits[0].outcome == "ok" and waits[0].detail["change"].startswith("/change/")
