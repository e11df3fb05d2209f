"""``trainer.precision: auto``: the audited system (task model, defenses' fine-tuning) trains in bf16-mixed
where the device computes bfloat16 in hardware and in float32 elsewhere; attacks always train in float32.
The report says what was used and on which CPU."""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest
import torch

from audit.core import cpu, training
from audit.core.training import TrainerSettings
from tests.engine_reference import cpu_signature as reference_signature


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_by_the_hardware_and_never_reaches_attacks(monkeypatch, native):
    monkeypatch.setattr(training, "native_bfloat16", lambda device: native)
    auto = TrainerSettings(precision="auto")
    assert auto.lightning_precision() == ("bf16-mixed" if native else None)
    assert auto.for_attacks().precision is None and auto.for_attacks().lightning_precision() is None
    assert auto.precision == "auto"  # for_attacks is a copy
    explicit = TrainerSettings(precision="bf16-mixed")  # the user's explicit choice holds for every training
    assert explicit.for_attacks() is explicit and explicit.lightning_precision() == "bf16-mixed"
    assert TrainerSettings().lightning_precision() is None
    assert training.make_trainer(auto, 1).precision == ("bf16-mixed" if native else "32-true")


def test_bfloat16_hardware_is_read_from_the_cpu_flags(monkeypatch):
    """No bf16 flag: emulated, so not native whatever oneDNN says; a flag and oneDNN's support: native."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not cpu.native_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert cpu.native_bfloat16(torch.device("cpu")) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert not cpu.native_bfloat16(torch.device("meta"))


def test_the_cpu_signature_is_the_engine_references(monkeypatch):
    """The engine-reference files were written with this signature: it must not change its format."""
    assert reference_signature is cpu.cpu_signature
    capability = torch.backends.cpu.get_cpu_capability()
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "lm", "avx512f"}))
    assert cpu.cpu_signature() == f"{capability}:{hashlib.sha256(b'avx2 avx512f fma sse2').hexdigest()[:8]}"
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset())
    assert cpu.cpu_signature() == f"{capability}:unknown"


def _role() -> str:
    files = [Path(f.filename).parts for f in inspect.stack()[2:]]
    for role in ("attacks", "defenses"):
        if any(role in parts for parts in files):
            return role
    return "task"


def test_an_auto_audit_trains_the_system_in_bf16_and_attacks_in_float32(
        tmp_path, tiny_config, monkeypatch):
    """Every Lightning training of a tiny audit (task model, the noise defense's cloud fine-tuning, the
    attribute head) with ``precision: auto``: what each trainer used, by the code that asked for it."""
    from audit import Audit, build_config

    used: dict[str, set[str]] = {}
    real = training.make_trainer

    def spy(settings, max_epochs, callbacks=None):
        trainer = real(settings, max_epochs, callbacks)
        used.setdefault(_role(), set()).add(trainer.precision)
        return trainer

    monkeypatch.setattr(training, "make_trainer", spy)  # fit_classifier / fit_to_convergence call it here
    # as on a CPU with AVX512-BF16 (this project's machine has one; elsewhere bf16 is emulated: slower, same test)
    monkeypatch.setattr(training, "native_bfloat16", lambda device: True)
    config = {**tiny_config, "cut_points": ["conv1"], "trainer": {"precision": "auto"}}
    audit = Audit(build_config(config), cache_dir=tmp_path / "cache")  # the task model trains in this run
    report = audit.run(tmp_path / "out", callbacks=[])

    assert used == {"task": {"bf16-mixed"}, "defenses": {"bf16-mixed"}, "attacks": {"32-true"}}
    assert report["environment"]["training_precision"] == {"task_model_and_defenses": "bf16-mixed",
                                                           "attacks": "32-true"}
    assert report["tasks"][0]["task_model"]["precision"] == "bf16-mixed"
    assert report["environment"]["cpu"]["signature"] == cpu.cpu_signature()
    assert report["environment"]["cpu"]["bfloat16"] == cpu.native_bfloat16(torch.device("cpu"))
    assert all(r["status"] == "ok" for r in report["results"])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["environment"]["training_precision"]["attacks"] == "32-true"
