"""The hybrid logical clock: monotonic, floored by what it observes, unique per writer."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from datastore import HybridLogicalClock
from datastore.clock import MAX_NODES


def test_timestamps_strictly_increase() -> None:
    clock = HybridLogicalClock(3)
    stamps = [clock.now() for _ in range(10_000)]
    assert all(a < b for a, b in zip(stamps, stamps[1:]))


@given(st.integers(min_value=0, max_value=2**62))
def test_observe_floors_the_clock_above_a_seen_timestamp(seen: int) -> None:
    clock = HybridLogicalClock(1)
    clock.observe(seen)
    assert clock.now() > seen


@given(st.integers(min_value=0, max_value=MAX_NODES - 1), st.integers(min_value=0, max_value=MAX_NODES - 1))
def test_two_writers_never_share_a_timestamp(a: int, b: int) -> None:
    assume(a != b)
    one, two = HybridLogicalClock(a), HybridLogicalClock(b)
    assert not {one.now() for _ in range(200)} & {two.now() for _ in range(200)}


def test_node_id_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="node id"):
        HybridLogicalClock(MAX_NODES)
