"""Reference records of the engine: what a refactoring of the engine must reproduce exactly.

``python -m tests.engine_reference tiny|default OUT.json`` runs an audit in this process (cells with one torch
thread) and writes, per record, the cell id and its figures. The files in ``tests/data/`` are compared by
``tests/test_engine_reference.py``. The engine before issue 20's restructuring (6dc7cd6) and the restructured
one wrote identical files; they were regenerated twice since: when the stronger attack heads and the cloud's
fine-tuning to convergence were merged (new default parameters, so new cell ids and stage seeds; the attribute
figures rose), and when statistics of features moved to float64 row chunks (issue 17's memory work: the noise
scale and standardisation in the last float32 bits; 55 of 282 default figures moved, inversion PSNR by <=
0.006 dB, one null-task balanced accuracy by 0.012). A change that is *meant* to change figures (a stronger
attack, a new default parameter) regenerates them with this command, and its commit says so and why.

Bit-exact figures hold on one kind of CPU only: torch, oneDNN and numpy pick their kernels by the CPU's
instruction set, and another summation order moves a 2-epoch training's figures. On 2026-12-04 the tiny audit
written on the earlier machine (an AMD EPYC without the AVX-512 BF16 extension) differed on this one (torch
capability AVX512) in 18 of 36 figures, e.g. a classifier MI 0.566 -> 0.541 nats, every one inside the
reference's 95% CI. A file therefore says which CPU wrote it (:func:`cpu_signature`): the test compares exactly
on that CPU and elsewhere wants at least 95% of the figures inside the reference's 95% CIs (the default audit
across the two CPUs: 5 of 282 outside). Both files were rewritten on the AVX-512 machine on 2026-12-04.
The default file was written again on 2026-12-05 on an Intel Xeon with AMX, when rMLE's steps went to
bfloat16 (``inversion_rmle.precision: auto``): its 36 rMLE records have new cell ids and figures. Of the other
246, 89 were identical to the AVX-512 machine's and 3 fell outside that file's CIs (kernels, as above).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from audit.core.cpu import cpu_signature

DATA = Path(__file__).resolve().parent / "data"

# seconds on two cores: one planted task, two cut points, two defenses, one attack of every family. The task
# is conftest.TINY's, written out rather than imported: the reference must not move when a fixture changes.
TINY_ENGINE = {
    "name": "engine-reference",
    "seeds": [0],
    "n_boot": 100,
    "dataset": {"name": "synthetic", "n": 400, "image_size": 8, "strength": 0.3},
    "model": {"name": "small_cnn", "widths": [8], "fc": [16]},
    "cut_points": ["conv1", "fc1"],
    "training": {"epochs": 2},
    "defenses": ["none", {"name": "noise", "scale": 1.0, "finetune_epochs": 1}],
    "attacks": {"attribute": {"epochs": 2}, "mi": {}, "inversion": {"epochs": 1, "batch_size": 32, "width": 8},
                "reidentify": {}},
}


def reference_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of every record, keyed by what identifies them (cell, target, metric)."""
    keep = ("cell_id", "dataset", "cut_point", "defense", "attack", "target", "metric", "status", "value", "ci95",
            "chance", "n_eval")
    rows = [{k: r.get(k) for k in keep} for r in report["results"]]
    return sorted(rows, key=lambda r: (r["cell_id"], str(r["target"]), str(r["metric"])))


def load_reference(which: str) -> dict[str, Any]:
    """``{"cpu": cpu_signature() of the machine that wrote it, "rows": [...]}`` of ``tiny`` or ``default``."""
    return json.loads((DATA / f"engine_reference_{which}.json").read_text())


def run_reference(which: str, out_dir: Path) -> list[dict[str, Any]]:
    """Run the ``tiny`` or the embedded ``default`` audit into ``out_dir`` with a fresh task-model cache
    beside it (a model cached by another test of the same task, trained with another thread count,
    differs in the last bits); its reference rows."""
    from audit import Audit, build_config, load_config
    from audit.executors import SequentialExecutor

    config = build_config(TINY_ENGINE) if which == "tiny" else load_config()
    audit = Audit(config, cache_dir=out_dir.parent / f"{out_dir.name}-cache")
    report = audit.run(out_dir, callbacks=[], executor=SequentialExecutor(threads=1))
    return reference_rows(report)


if __name__ == "__main__":  # pragma: no cover - writes the reference files
    import tempfile

    which, target = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_reference(which, Path(tmp) / "out")
    target.write_text(json.dumps({"cpu": cpu_signature(), "rows": rows}, indent=1) + "\n")
    print(f"{len(rows)} records -> {target}")
