"""When a request is late and how many hedges a client may send (datagen/service/client/hedging.py), by hand.

The hedges themselves, against real replicas one of which is frozen, are in tests/service/test_fleet_faults.py."""

import pytest

from datagen.service.client.hedging import HedgeBudget, Lateness


def test_nothing_is_late_until_enough_silences_were_observed():
    lateness = Lateness(min_observations=4)
    for seconds in (0.1, 0.2, 0.3):
        lateness.observe(seconds)
    assert lateness.threshold() is None
    lateness.observe(0.4)
    assert lateness.threshold() == pytest.approx(2.0)  # 2 x 0.4 = 0.8 is under the 2 s floor


def test_the_threshold_is_a_multiple_of_the_nearest_rank_quantile():
    lateness = Lateness(quantile=0.95, factor=2.0, floor=0.0, window=256, min_observations=8)
    for i in range(1, 21):  # 0.5, 1.0, ... 10.0 s, in a shuffled order
        lateness.observe(0.5 * ((7 * i) % 20 + 1))
    assert lateness.threshold() == pytest.approx(2 * 9.5)  # rank ceil(0.95 * 20) = 19 of 20: 9.5 s


def test_the_threshold_follows_the_replicas_speed_so_a_uniformly_slow_fleet_is_not_hedged():
    lateness = Lateness(floor=1.0, window=16, min_observations=8)
    for _ in range(16):
        lateness.observe(0.2)
    assert lateness.threshold() == pytest.approx(1.0)  # the floor: a 3 s silence would be late here
    for _ in range(16):  # the fleet slows down everywhere (a throttled host, bigger batches): 3 s per batch
        lateness.observe(3.0)
    assert lateness.threshold() == pytest.approx(6.0)  # the same 3 s silence is now ordinary
    for _ in range(15):
        lateness.observe(0.2)
    assert lateness.threshold() == pytest.approx(6.0)  # the window still holds one slow silence: the p95
    lateness.observe(0.2)
    assert lateness.threshold() == pytest.approx(1.0)


def test_the_budget_allows_a_burst_then_a_share_of_the_requests():
    budget = HedgeBudget(fraction=0.05, burst=2.0)
    assert [budget.spend() for _ in range(3)] == [True, True, False]
    for _ in range(19):
        budget.earn()
    assert not budget.spend()  # 19 requests earn 0.95 of a hedge
    budget.earn()
    assert budget.spend() and not budget.spend()
    for _ in range(1000):
        budget.earn()
    assert budget.tokens == pytest.approx(2.0)  # never more than the burst saved


def test_a_zero_budget_never_hedges_and_bad_settings_are_refused():
    budget = HedgeBudget(0, 0)
    budget.earn()
    assert not budget.spend()
    with pytest.raises(ValueError):
        HedgeBudget(-0.1)
    with pytest.raises(ValueError):
        Lateness(quantile=0)
    with pytest.raises(ValueError):
        Lateness(window=4, min_observations=8)
