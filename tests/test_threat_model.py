"""Attack plugins get a cloud view only (issue 18, item 2): nothing reachable from an attack's
context (attributes, containers, closures, bound methods) holds the CKKS secret key, the fitted
defense or the device's random streams."""
from __future__ import annotations

import types

import pytest
import tenseal as ts
import torch

from attacks import ATTACKS, Attack, Score
from audit import Audit, build_config
from defenses.base import generators_of
from defenses.he.ckks import DeviceCrypto
from tests.conftest import TINY
from tests.helpers import fitted_context, prepared_task

seal = ts.sealapi
ATOMS = (str, bytes, int, float, bool, complex, type(None), torch.Tensor, types.ModuleType, type)


def reachable(root, limit: int = 400_000) -> list:
    """Every object reachable from ``root`` the way plugin code could walk it: attributes (``__dict__``
    and slots), dict keys/values, sequence items, closure cells and defaults of functions, the
    instance behind a bound method. Module globals are not followed (they are code, not state)."""
    seen, out, stack = set(), [], [root]
    while stack and len(out) < limit:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        out.append(o)
        if isinstance(o, ATOMS):
            continue
        if isinstance(o, dict):
            stack += list(o.keys()) + list(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack += list(o)
        elif isinstance(o, types.FunctionType):
            for cell in o.__closure__ or ():
                try:
                    stack.append(cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            stack += list(o.__defaults__ or ()) + list((o.__kwdefaults__ or {}).values())
        elif isinstance(o, types.MethodType):
            stack += [o.__self__, o.__func__]
        else:
            if hasattr(o, "__dict__"):
                stack += list(vars(o).values())
            for cls in type(o).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(o, slot):
                        stack.append(getattr(o, slot))
    assert len(out) < limit, "object graph larger than the walk's limit"
    return out


def secrets_in(objects) -> list[str]:
    """Names of the device secrets among ``objects``."""
    found = []
    for o in objects:
        if isinstance(o, DeviceCrypto):
            found.append("DeviceCrypto (the device's keys)")
        elif isinstance(o, (seal.Decryptor, seal.SecretKey)):
            found.append(type(o).__name__)
        elif isinstance(o, ts.Context) and (o.is_private() or o.has_secret_key()):
            found.append("tenseal context holding the secret key")
    return found


class Snoop(Attack):
    """Test-only: walks everything its context reaches and reports device secrets it could use."""

    def score(self, ctx):
        objects = reachable(ctx)
        extra = {"secrets": secrets_in(objects), "has_defense_field": hasattr(ctx, "defense"),
                 "objects": len(objects), "queried": list(ctx.channel.release(ctx.aux.x[:2]).shape)}
        return [Score("secret", "snoop", 0.0, (0.0, 0.0), None, len(ctx.test), extra=extra)]


@pytest.fixture
def snoop():
    ATTACKS.register("test_snoop")(Snoop)
    yield "test_snoop"
    ATTACKS._classes.pop("test_snoop", None)


def test_the_walk_finds_the_secret_key_when_it_is_reachable():
    """The check can fail: handed the fitted he defense itself, the walk finds its keys."""
    data, net = prepared_task(TINY["dataset"], TINY["model"], epochs=1)
    ctx, fitted = fitted_context(data, net, "conv1", defense="he", release_bytes=512)
    assert "DeviceCrypto (the device's keys)" in secrets_in(reachable(fitted))
    assert "tenseal context holding the secret key" in secrets_in(reachable(fitted))
    assert secrets_in(reachable(ctx)) == []
    assert not any(o is fitted for o in reachable(ctx))


@pytest.mark.parametrize("defense,params", [("noise", {"finetune_epochs": 0}), ("datamix", {"epochs": 0})])
def test_the_channel_holds_none_of_the_device_random_streams(defense, params):
    data, net = prepared_task(TINY["dataset"], TINY["model"], epochs=1)
    ctx, fitted = fitted_context(data, net, "conv1", defense=defense, **params)
    device_streams = [g.get_state() for g in generators_of(fitted)]
    assert device_streams  # the defense draws its secrets from a stream of its own
    objects = reachable(ctx)
    assert not any(o is fitted for o in objects) and not hasattr(ctx, "defense")
    for g in (o for o in objects if isinstance(o, torch.Generator)):
        assert not any(torch.equal(g.get_state(), state) for state in device_streams)
    # queries still see the defense at work: fresh noise / fresh mixing per call
    x = data.part("aux").x[:8]
    assert not torch.equal(ctx.channel.release(x), ctx.channel.release(x))


def test_runner_hands_attacks_a_cloud_view_only(tmp_path, snoop):
    config = build_config({**TINY, "cut_points": ["conv1"], "attacks": {snoop: {}},
                           "defenses": ["none", {"name": "he", "release_bytes": 512}, "datamix"]})
    report = Audit(config).run(tmp_path / "out", callbacks=[])
    records = report["results"]
    assert len(records) == 3 and all(r["status"] == "ok" for r in records), [r["error"] for r in records]
    for r in records:
        assert r["extra"]["secrets"] == [] and r["extra"]["has_defense_field"] is False, r
        assert r["extra"]["objects"] > 100 and r["extra"]["queried"][0] == 2  # it did walk, and could query
