"""The history checker, specified by hand-built histories (pure logic, no services)."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nxnw.history import MAX_EXAMPLES, History, HistoryError, Op, check


def w(client, key, value, ts, at, until=None, ok=True):
    return Op(client, "write", key, value, ts if ok else None, at, at + 0.5 if until is None else until, ok)


def d(client, key, ts, at, until=None, ok=True):
    return Op(client, "delete", key, None, ts if ok else None, at, at + 0.5 if until is None else until, ok)


def r(client, key, ts, at, until=None, value=None):
    return Op(client, "read", key, value, ts, at, at + 0.5 if until is None else until, True)


# --- a clean history ------------------------------------------------------------------

def test_a_clean_history_reports_nothing_and_counts_every_acknowledged_op():
    ops = [
        w("c1", "a", b"1", 100, 0), r("c1", "a", 100, 1), w("c2", "a", b"2", 200, 2),
        r("c1", "a", 200, 3), w("c1", "b", b"x", 150, 0), d("c2", "b", 250, 1),
        r("c2", "b", None, 2), w("c3", "c", b"u", None, 0, ok=False), r("c3", "missing", None, 5),
    ]
    report = check(History(ops), {"a": (b"2", 200), "b": None})
    assert report.ok, report.summary()
    assert (report.acknowledged_writes, report.acknowledged_deletes, report.reads) == (3, 1, 4)


def test_keys_no_write_or_delete_touched_are_not_checked():
    report = check(History([r("c1", "a", None, 0)]), {"preloaded": (b"v", 5)})
    assert report.ok


# --- lost writes --------------------------------------------------------------------

def test_a_missing_entity_after_an_acknowledged_write_is_a_lost_write():
    report = check(History([w("c1", "a", b"1", 100, 0)]), {})
    assert report.lost_writes == 1 and not report.ok
    assert report.examples["lost-write"][0].key == "a"


def test_an_older_timestamp_than_the_newest_acknowledged_write_is_a_lost_write():
    ops = [w("c1", "a", b"1", 100, 0), w("c1", "a", b"2", 200, 1)]
    assert check(History(ops), {"a": (b"1", 100)}).lost_writes == 1


def test_the_same_timestamp_with_another_value_is_a_lost_write():
    assert check(History([w("c1", "a", b"1", 100, 0)]), {"a": (b"other", 100)}).lost_writes == 1


def test_str_and_bytes_values_compare_by_their_utf8_bytes():
    assert check(History([w("c1", "a", "é", 100, 0)]), {"a": ("é".encode(), 100)}).ok


def test_the_newest_write_by_timestamp_not_by_completion_order_must_be_visible():
    # the write with the larger ts completed first; the other one must not win
    ops = [w("c1", "a", b"new", 200, 0, 1), w("c2", "a", b"old", 100, 0, 2)]
    assert check(History(ops), {"a": (b"new", 200)}).ok
    assert check(History(ops), {"a": (b"old", 100)}).lost_writes == 1


def test_an_unacknowledged_delete_may_explain_a_missing_entity():
    ops = [d("c2", "a", None, 0, ok=False), w("c1", "a", b"1", 100, 1)]
    assert check(History(ops), {}).ok


def test_an_unacknowledged_delete_with_an_older_recorded_ts_does_not_explain_a_missing_entity():
    ops = [Op("c2", "delete", "a", None, 50, 0, 0.5, False), w("c1", "a", b"1", 100, 1)]
    assert check(History(ops), {}).lost_writes == 1


# --- resurrected deletes ------------------------------------------------------------

def test_a_value_older_than_the_acknowledged_delete_is_a_resurrected_delete():
    ops = [w("c1", "a", b"1", 100, 0), d("c1", "a", 200, 1)]
    report = check(History(ops), {"a": (b"1", 100)})
    assert report.resurrected_deletes == 1 and report.lost_writes == 0
    assert "200" in report.examples["resurrected-delete"][0].reason


def test_a_deleted_key_that_stays_deleted_is_fine():
    ops = [w("c1", "a", b"1", 100, 0), d("c1", "a", 200, 1)]
    assert check(History(ops), {"a": None}).ok
    assert check(History(ops), {}).ok


# --- unknown writes -----------------------------------------------------------------

def test_a_newer_value_from_an_unacknowledged_write_is_accepted():
    ops = [w("c1", "a", b"1", 100, 0), w("c2", "a", b"timed-out", None, 1, ok=False)]
    assert check(History(ops), {"a": (b"timed-out", 300)}).ok


def test_a_newer_value_after_a_delete_from_an_unacknowledged_write_is_accepted():
    ops = [d("c1", "a", 100, 0), w("c2", "a", b"late", None, 1, ok=False)]
    assert check(History(ops), {"a": (b"late", 300)}).ok


def test_a_newer_value_nobody_wrote_is_an_unknown_write():
    ops = [w("c1", "a", b"1", 100, 0), w("c2", "a", b"timed-out", None, 1, ok=False)]
    report = check(History(ops), {"a": (b"from-nowhere", 300)})
    assert report.unknown_writes == 1 and report.lost_writes == 0


def test_a_value_on_a_key_with_only_unacknowledged_ops_must_match_one_of_them():
    ops = [w("c2", "a", b"maybe", None, 0, ok=False)]
    assert check(History(ops), {"a": (b"maybe", 10)}).ok
    assert check(History(ops), {}).ok
    assert check(History(ops), {"a": (b"nope", 10)}).unknown_writes == 1


def test_an_unacknowledged_write_with_a_recorded_ts_explains_only_that_ts():
    ops = [w("c1", "a", b"1", 100, 0), Op("c2", "write", "a", b"2", 300, 1, 1.5, False)]
    assert check(History(ops), {"a": (b"2", 300)}).ok
    assert check(History(ops), {"a": (b"2", 301)}).unknown_writes == 1


# --- stale reads --------------------------------------------------------------------

def test_reading_an_older_ts_after_a_write_completed_is_a_stale_read():
    ops = [w("c1", "a", b"1", 100, 0, 1), w("c1", "a", b"2", 200, 2, 3), r("c2", "a", 100, 4)]
    report = check(History(ops), {"a": (b"2", 200)})
    assert report.stale_reads == 1 and report.examples["stale-read"][0].ops[0].ts == 200


def test_reading_an_older_ts_concurrently_with_a_write_is_not_stale():
    ops = [w("c1", "a", b"1", 100, 0, 1), w("c1", "a", b"2", 200, 2, 3), r("c2", "a", 100, 2.5)]
    assert check(History(ops), {"a": (b"2", 200)}).ok


def test_a_read_invoked_at_the_instant_a_write_completed_is_concurrent_with_it():
    ops = [w("c1", "a", b"1", 100, 0, 1), r("c2", "a", None, 1, 2)]
    assert check(History(ops), {"a": (b"1", 100)}).ok


def test_a_404_after_an_acknowledged_write_completed_is_a_stale_read():
    ops = [w("c1", "a", b"1", 100, 0, 1), r("c2", "a", None, 2)]
    assert check(History(ops), {"a": (b"1", 100)}).stale_reads == 1


def test_a_value_read_after_an_acknowledged_delete_completed_is_a_stale_read():
    ops = [w("c1", "a", b"1", 100, 0, 1), d("c1", "a", 200, 2, 3), r("c2", "a", 100, 4)]
    assert check(History(ops), {}).stale_reads == 1


def test_a_404_explained_by_a_concurrent_unacknowledged_delete_is_not_stale():
    ops = [w("c1", "a", b"1", 100, 0, 1), d("c3", "a", None, 1.5, 9, ok=False), r("c2", "a", None, 2)]
    assert check(History(ops), {}).ok


def test_a_404_is_not_explained_by_a_delete_invoked_after_the_read_completed():
    ops = [w("c1", "a", b"1", 100, 0, 1), r("c2", "a", None, 2, 3), d("c3", "a", None, 4, 5, ok=False)]
    assert check(History(ops), {}).stale_reads == 1


def test_a_client_that_reads_an_older_ts_than_it_read_before_sees_time_go_back():
    # the write of ts 200 is concurrent with both reads, so only monotonicity catches it
    ops = [w("c1", "a", b"1", 100, 0, 1), w("c1", "a", b"2", 200, 2, 10),
           r("c2", "a", 200, 3, 4), r("c2", "a", 100, 5, 6)]
    report = check(History(ops), {"a": (b"2", 200)})
    assert report.stale_reads == 1 and "non-monotonic" in report.examples["stale-read"][0].reason


def test_another_client_may_still_read_the_older_ts_while_the_write_is_in_flight():
    ops = [w("c1", "a", b"1", 100, 0, 1), w("c1", "a", b"2", 200, 2, 10),
           r("c2", "a", 200, 3, 4), r("c3", "a", 100, 5, 6)]
    assert check(History(ops), {"a": (b"2", 200)}).ok


def test_a_client_that_reads_404_after_a_value_needs_a_delete_to_explain_it():
    base = [w("c1", "a", b"1", 100, 0, 10), r("c2", "a", 100, 3, 4), r("c2", "a", None, 5, 6)]
    assert check(History(base), {"a": (b"1", 100)}).stale_reads == 1
    assert check(History([*base, d("c3", "a", 150, 4.5, 11)]), {}).ok


def test_examples_are_capped_but_counts_are_not():
    ops = [w("c1", f"k{i}", b"1", 100 + i, i) for i in range(MAX_EXAMPLES + 5)]
    report = check(History(ops), {})
    assert report.lost_writes == MAX_EXAMPLES + 5
    assert len(report.examples["lost-write"]) == MAX_EXAMPLES


# --- the record itself ------------------------------------------------------------------

def test_an_acknowledged_write_without_a_ts_is_rejected_with_the_op():
    with pytest.raises(HistoryError, match="must carry the proxy's ts"):
        Op("c1", "write", "a", b"1", None, 0, 1, True)
    with pytest.raises(HistoryError, match="not one of"):
        Op("c1", "update", "a", b"1", 1, 0, 1, True)


def test_a_history_survives_a_save_and_load_with_bytes_and_str_values(tmp_path):
    ops = [w("c1", "a", b"\x00\xff", 100, 0), w("c1", "b", "text", 101, 1), r("c2", "a", None, 2),
           d("c2", "b", None, 3, ok=False)]
    path = tmp_path / "history.jsonl"
    History(ops).save(path)
    assert History.load(path).ops == ops
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_loading_a_corrupt_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(w("c1", "a", b"1", 100, 0).to_json()) + "\n{not json\n")
    with pytest.raises(HistoryError, match=r"history\.jsonl:2"):
        History.load(path)


def test_begin_stamps_both_ends_and_appends_from_many_threads():
    history = History()

    def client(n: int) -> None:
        for i in range(200):
            history.begin(f"c{n}", "write", f"k{n}", b"v").succeed(n * 1000 + i)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(history) == 1600
    assert all(o.invoked_at <= o.completed_at for o in history)
    pending = history.begin("c9", "read", "k0")
    pending.succeed(None)
    with pytest.raises(HistoryError, match="already recorded"):
        pending.fail()


# --- properties ---------------------------------------------------------------------

KEYS = ["a", "b", "c"]
CLIENTS = ["c1", "c2", "c3"]

step = st.tuples(
    st.sampled_from(["write", "delete", "read"]),
    st.sampled_from(KEYS),
    st.sampled_from(CLIENTS),
    st.sampled_from(["acked", "acked", "acked", "applied-unacked", "lost-unacked"]),
    st.floats(0, 3),   # how long before its linearization point the op was invoked
    st.floats(0, 3),   # how long after it the client saw the answer
)


def register_model(steps):
    """A linearizable history of a last-write-wins register per key, and its final state.

    Op i takes effect at instant i (its linearization point) with ts 1000 + 7i; invocation
    and completion straddle that instant, so ops overlap as they would with real clients.
    Unacknowledged ops are either applied (with a ts nobody saw) or never applied.
    """
    state: dict[str, tuple[bytes, int] | None] = {}
    ops = []
    for i, (kind, key, client, fate, before, after) in enumerate(steps):
        ts = 1000 + 7 * i
        at, until = i - before, i + after
        if kind == "read":
            if fate == "acked":
                cur = state.get(key)
                ops.append(Op(client, "read", key, None if cur is None else cur[0],
                              None if cur is None else cur[1], at, until, True))
            continue
        value = f"{client}-{i}".encode() if kind == "write" else None
        if fate != "lost-unacked":
            state[key] = (value, ts) if kind == "write" else None
        acked = fate == "acked"
        ops.append(Op(client, kind, key, value, ts if acked else None, at, until, acked))
    return ops, state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60))
def test_a_linearizable_register_history_never_reports_an_anomaly(steps):
    ops, state = register_model(steps)
    report = check(History(ops), state)
    assert report.ok, report.summary()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60), st.sampled_from(KEYS), st.sampled_from(CLIENTS),
       st.sampled_from(["missing", "older", "other-value"]))
def test_damaging_a_key_whose_last_op_is_an_acknowledged_write_always_reports_a_lost_write(steps, key, client, damage):
    if damage == "missing":
        # an unacknowledged delete may legitimately have removed the key: leave none in
        steps = [s for s in steps if not (s[0] == "delete" and s[1] == key and s[3] != "acked")]
    ops, state = register_model([*steps, ("write", key, client, "acked", 1.0, 1.0)])
    last = ops[-1]
    if damage == "missing":
        state[key] = None
    elif damage == "older":
        state[key] = (last.value, last.ts - 1)
    else:
        state[key] = (last.value + b"!", last.ts)
    report = check(History(ops), state)
    assert report.lost_writes == 1, report.summary()
    assert report.examples["lost-write"][0].key == key


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60), st.sampled_from(KEYS))
def test_a_newer_value_no_write_could_have_made_is_always_an_unknown_write(steps, key):
    ops, state = register_model(steps)
    assume(any(o.key == key and o.kind != "read" for o in ops))
    state[key] = (b"never-written", 10**9)
    report = check(History(ops), state)
    assert report.unknown_writes == 1 and report.lost_writes == report.resurrected_deletes == 0, report.summary()
