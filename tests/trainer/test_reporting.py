"""What a distributed run reports: global-batch losses from per-rank windows, per-rank throughput, and the
starvation advice, with hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.pretrain.reporting import RankReport, merge_reports
from trainer.pretrain.starvation import (
    RankWindow,
    StarvationMonitor,
    consumption_rate,
    replicas_needed,
    starvation_advice,
)


def report(losses: list[list[float]], indices: list[list[int]], seconds: float = 2.0, wait: float = 0.5) -> RankReport:
    steps = [(10 + i, 3, 0.01) for i in range(len(losses))]
    return RankReport(steps, losses, indices, seconds, wait, delivered=None)


def test_a_steps_loss_is_its_global_batchs_mean_whatever_the_split():
    rank0 = report([[2.0, 1.5, 0.5], [4.0, 3.0, 1.0]], [[0, 2], [4]])
    rank1 = report([[5.0, 4.0, 1.0], [0.0, 0.0, 0.0]], [[1], []])  # an empty last batch carries no weight
    rows, scalars = merge_reports([rank0, rank1], log_indices=True)
    assert [r["step"] for r in rows] == [10, 11] and rows[0]["epoch"] == 4 and rows[0]["lr"] == 0.01
    assert rows[0]["loss"] == pytest.approx((2 * 2.0 + 5.0) / 3) and rows[0]["loss_centre"] == pytest.approx(
        (3.0 + 4.0) / 3
    )
    assert rows[1]["loss"] == 4.0 and rows[1]["loss_size"] == 1.0
    assert rows[0]["indices"] == [[0, 2], [1]] and rows[1]["indices"] == [[4], []]
    assert scalars["train/loss"] == pytest.approx((3.0 + 4.0) / 2)
    assert scalars["throughput/rank0/clips_per_s"] == 1.5 and scalars["throughput/rank1/clips_per_s"] == 0.5
    assert scalars["throughput/clips_per_s"] == 2.0 and scalars["throughput/data_wait"] == 0.25


def test_one_rank_reports_its_own_values_exactly():
    # float32 losses, as the step computes them: weighted by an integer count and divided again in float64, exact
    losses = torch.tensor([[1 / 3, 0.1, 1 / 3 - 0.1], [7.123456789, 5.0, 2.123456789]], dtype=torch.float32).tolist()
    rows, scalars = merge_reports([report(losses, [[0, 1, 2], [3, 4, 5]])], log_indices=False)
    assert [[r["loss"], r["loss_centre"], r["loss_size"]] for r in rows] == losses  # bit for bit
    assert "indices" not in rows[0] and not any("rank0" in name for name in scalars)


def test_replicas_needed_from_consumption_and_per_replica_delivery():
    # Two ranks, 64 clips each in 10 s of which 5 s waiting: unstarved they would take 64 / 5 = 12.8 clips/s each.
    windows = [RankWindow(64, 10.0, 5.0), RankWindow(64, 10.0, 5.0)]
    assert consumption_rate(windows) == pytest.approx(25.6)
    # Two replicas delivered 128 clips in 10 s: 6.4 clips/s each; 25.6 / 6.4 = 4 replicas.
    assert replicas_needed(25.6, {"a": 60, "b": 68}, 10.0) == 4
    assert replicas_needed(25.7, {"a": 60, "b": 68, "idle": 0}, 10.0) == 5  # idle replicas are not counted
    assert replicas_needed(25.6, {"a": 0}, 10.0) is None

    advice = starvation_advice(windows, {"a": 60, "b": 68})
    assert "waited 50% of the last 10.0 s" in advice and "2 replica(s) delivered 6.4 clips/s each" in advice
    assert "could consume 25.6 clips/s: about 4 replicas would keep it fed" in advice
    assert "2 more than the 2 delivering now" in advice  # how many to add, not only how many in all
    # Enough replicas (8 deliver 6.4 clips/s each, 4 would do): more would not help, the transport is the suspect.
    enough = starvation_advice(windows, {str(i): 64 for i in range(8)})
    assert "no more than deliver now; check the transport" in enough and "more than the" not in enough


def test_advice_only_when_starved_and_fitting_the_source():
    fed = [RankWindow(64, 10.0, 0.9), RankWindow(64, 10.0, 1.0)]  # 9.5 % waiting
    assert starvation_advice(fed, {"a": 128}) is None and starvation_advice(fed, None) is None
    starved = [RankWindow(30, 10.0, 4.0)]
    in_process = starvation_advice(starved, None)
    assert "in-process generation makes 3.0 clips/s, training could consume 5.0" in in_process
    assert "CTP_REDIS_URL" in in_process
    assert "no datagen replica delivered any" in starvation_advice(starved, {"gone": 0})
    assert math.isclose(RankWindow(0, 0.0, 0.0).wait_share, 0.0)


def test_the_monitor_advises_from_window_deliveries_after_the_first_window_and_not_too_often():
    now = [0.0]
    monitor = StarvationMonitor(every_s=300, clock=lambda: now[0])
    starved = [RankWindow(64, 10.0, 5.0), RankWindow(64, 10.0, 5.0)]  # could consume 25.6 clips/s
    assert monitor.update(starved, {"a": 500, "b": 500}) is None  # the first window fills the pipeline
    now[0] = 10.0
    # Since the start a and b delivered 560 and 568 clips: 60 and 68 in this window, 6.4 clips/s each.
    assert "about 4 replicas would keep it fed" in monitor.update(starved, {"a": 560, "b": 568})
    now[0] = 20.0
    assert monitor.update(starved, {"a": 620, "b": 636}) is None  # said 10 s ago
    now[0] = 400.0
    # 20 and 44 clips in the window, and a third replica joined with 64: 3 replicas at 128 / 10 / 3 clips/s.
    assert "3 replica(s) delivered 4.3 clips/s each" in monitor.update(starved, {"a": 640, "b": 680, "c": 64})
    now[0] = 800.0
    assert monitor.update([RankWindow(64, 10.0, 0.0)], {"a": 700, "b": 740, "c": 128}) is None  # fed


def test_a_window_in_which_replicas_failed_is_called_a_fault_not_a_shortage_of_replicas():
    # A frozen replica: the rank waited 90 % of 10 s for its samples, so it "could consume" 64 clips/s against the
    # 3.2 clips/s each of the two others delivered: read as a shortage, 20 replicas, 18 more.
    starved = [RankWindow(64, 10.0, 9.0)]
    assert "18 more than the 2 delivering now" in starvation_advice(starved, {"a": 32, "b": 32})
    faulty = starvation_advice(starved, {"a": 32, "b": 32}, {"hedges_sent": 1, "stalls": 0, "requeued": 16})
    assert "while datagen replicas failed (1 request(s) late and hedged, 16 sample(s) asked again): a fault, not " in (
        faulty
    )
    assert "more than" not in faulty and "ctp-datagen status" in faulty


def test_the_monitor_names_a_replica_that_stopped_delivering_and_counts_faults_per_window():
    now = [0.0]
    monitor = StarvationMonitor(every_s=0, clock=lambda: now[0])
    starved = [RankWindow(64, 10.0, 5.0)]
    no_faults = {"hedges_sent": 0, "stalls": 0, "replica_failures": 0, "requeued": 0}
    assert monitor.update(starved, {"a": 100, "b": 100, "c": 100}, no_faults) is None  # the first window
    now[0] = 10.0
    frozen = monitor.update(starved, {"a": 132, "b": 132, "c": 100}, no_faults)
    assert "(replica c delivered nothing): a fault" in frozen
    now[0] = 20.0
    hedged = monitor.update(starved, {"a": 164, "b": 164, "c": 100}, {**no_faults, "hedges_sent": 2, "requeued": 8})
    assert "(2 request(s) late and hedged, 8 sample(s) asked again)" in hedged
    now[0] = 30.0  # no new fault in this window: the shortage reading again
    assert "more than the 2 delivering now" in monitor.update(
        starved, {"a": 196, "b": 196, "c": 100}, {**no_faults, "hedges_sent": 2, "requeued": 8}
    )
