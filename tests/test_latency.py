"""Latency (issue 16 item 6): the median of repeated timed runs after warm-up, with its quartiles in the
record; a difference inside the spread is not shown as one."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from audit.decision import latencies_differ, latency_text
from defenses.base import Defense, latency, timed_runs


class FakeClock:
    """A clock (seconds) that each call of the timed function advances by the next of ``durations``."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, list(durations)

    def __call__(self):
        return self.now

    def run(self):
        self.now += self.durations.pop(0)


def test_warm_up_runs_are_not_timed_and_the_median_and_quartiles_are_exact():
    # two slow warm-up runs (a cold cache), then 1..11 ms
    clock = FakeClock([0.5, 0.5] + [k / 1000 for k in range(1, 12)])
    times = timed_runs(clock.run, repeats=11, warmup=2, budget_s=1e9, clock=clock)
    assert times == pytest.approx([float(k) for k in range(1, 12)])
    out = latency(times, n=4, prefix="edge")  # per sample: a batch of 4
    assert out == pytest.approx({"edge_latency_ms": 6 / 4, "edge_latency_q1_ms": 3.5 / 4, "edge_latency_q3_ms": 8.5 / 4})


def test_slow_runs_are_timed_fewer_times_within_the_budget():
    clock = FakeClock([1.0] * 20)
    assert len(timed_runs(clock.run, repeats=11, warmup=2, budget_s=4.0, clock=clock)) == 4
    clock = FakeClock([1.0] * 20)  # never fewer than 3
    assert len(timed_runs(clock.run, repeats=11, warmup=1, budget_s=0.1, clock=clock)) == 3


def test_a_known_sleep_is_measured_and_an_overlapping_spread_is_no_difference():
    times = timed_runs(lambda: time.sleep(0.01), repeats=5, warmup=1)
    assert 9.5 <= latency(times, 1, "edge")["edge_latency_ms"] < 60  # a 10 ms sleep (slack: a loaded machine)
    none = {"edge_latency_ms": 0.0067, "edge_latency_q1_ms": 0.006, "edge_latency_q3_ms": 2.5}
    noisy = {"edge_latency_ms": 2.287, "edge_latency_q1_ms": 0.007, "edge_latency_q3_ms": 2.9}  # issue 16's case
    slow = {"edge_latency_ms": 40.0, "edge_latency_q1_ms": 39.0, "edge_latency_q3_ms": 41.0}
    assert latencies_differ(noisy, none, "edge") is False and latencies_differ(slow, none, "edge") is True
    assert latencies_differ({"edge_latency_ms": 1.0}, none, "edge") is None  # no spread: unknown
    assert latency_text(noisy, "edge", none) == "≈ none (2.287 [0.007–2.9])"
    assert latency_text(slow, "edge", none) == "40 [39–41]"
    assert latency_text(none, "edge", none) == "0.0067 [0.006–2.5]"
    assert latency_text({}, "edge", none) == "n/a"


def test_a_defense_cost_records_median_and_quartiles_per_sample():
    d = Defense(Defense.Params())
    d.edge, d.cloud = nn.Linear(8, 4).eval(), nn.Linear(4, 2).eval()
    cost = d.cost(torch.randn(16, 8), full_flops=1000)
    for prefix in ("edge", "cloud"):
        q1, median, q3 = (cost[f"{prefix}_latency{k}_ms"] for k in ("_q1", "", "_q3"))
        assert 0 < q1 <= median <= q3
