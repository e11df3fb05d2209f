"""audit.core.heap: inside a hot loop of a run, large blocks come back from the heap instead of fresh pages."""
import ctypes
import resource

import pytest
import torch

from audit.core.heap import allow_reuse, reusing
from audit.core.profile import resident_bytes

try:
    ctypes.CDLL(None).mallopt
    GLIBC = True
except (OSError, AttributeError):
    GLIBC = False

pytestmark = pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
MB = 1 << 20
BLOCK = 64 * MB  # 16,384 pages of 4 KiB: that many first-touch faults when the block is a fresh mapping


def faults_per_round(rounds: int) -> list[int]:
    """Page faults of each round: a ``BLOCK``-byte tensor allocated, written and freed (a training step's
    activation, in miniature)."""
    out = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.empty(BLOCK, dtype=torch.uint8)
        block.fill_(1)  # touch every page
        del block
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out


def test_large_blocks_stop_faulting_inside_a_loop_and_the_heap_is_handed_back_after_it():
    outside = faults_per_round(4)
    if min(outside) < 1000:  # transparent huge pages on every mapping: nothing to save here
        pytest.skip(f"{outside} faults per 64 MB block without the setting")
    with reusing() as took:  # no run allows it: glibc as it is
        assert not took
        assert min(faults_per_round(4)) > 1000
    with allow_reuse(1024):
        with reusing() as took:
            assert took
            inside = faults_per_round(20)
            kept = resident_bytes()[0]  # the freed blocks stay resident for the next step
        handed_back = kept - resident_bytes()[0]
    # glibc grows the heap for the first few blocks (each request is a little larger than the freed
    # block, with small objects between them) and then serves every block from freed heap
    assert max(inside[-10:]) < 100, inside
    assert sum(x > 1000 for x in inside) <= 8, inside  # bounded growth: at most 8 x 64 MB of heap
    assert handed_back >= BLOCK, handed_back / MB  # the loop's free heap is handed back when it ends


def test_an_audit_reuses_the_heap_in_its_trainings_only_when_asked_and_gives_the_same_records(
        tmp_path, tiny_config, monkeypatch):
    import audit.core.heap as heap
    from audit import Audit, build_config
    from audit.executors import SequentialExecutor
    from audit.merge import report_values

    calls = []
    real = heap.set_thresholds
    monkeypatch.setattr(heap, "set_thresholds", lambda m, t: calls.append(m) or real(m, t))
    tiny_config.update(cut_points=["conv1"], defenses=["none"], attacks={"attribute": {"epochs": 2, "head": "cnn"}})

    def run(name, reuse_mb):
        config = build_config({**tiny_config, "memory": {"heap_reuse_mb": reuse_mb}})
        return Audit(config, cache_dir=tmp_path / "cache").run(tmp_path / name, callbacks=[],
                                                               executor=SequentialExecutor(threads=1))

    off = run("off", 0)
    assert calls == []
    on = run("on", 64)
    # each training (the attack's head: validation run, then the refit) raised the thresholds and restored them
    assert calls[0::2] == [64 * MB] * (len(calls) // 2) and calls[1::2] == [heap.GLIBC_DEFAULT] * (len(calls) // 2)
    assert len(calls) >= 4
    assert report_values(on)["results"] == report_values(off)["results"]
