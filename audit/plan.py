"""The plan of an audit: its grid of cells (task x seed x cut point x defense x attack) and shards of it.

A cell's ``id`` hashes everything that determines its results, so the results store can tell a
finished cell from one to run, across reruns and shards.
"""
from __future__ import annotations

from dataclasses import dataclass

from audit.config import AuditConfig
from audit.core.errors import AuditInputError
from audit.core.seeds import stable_hash
from audit.tasks import task_key


@dataclass(frozen=True)
class Cell:
    """One unit of the grid; ``id`` hashes everything that determines its results."""

    task: int
    seed: int
    cut_point: str
    defense: int  # index into config.defenses
    attack: str
    id: str

    @property
    def group(self) -> tuple[int, int, str, int]:
        return (self.task, self.seed, self.cut_point, self.defense)


def plan_cells(config: AuditConfig) -> list[Cell]:
    """Every cell of the audit, in execution order."""
    defense_params = [config.defense_params(d).model_dump(mode="json") for d in range(len(config.defenses))]
    attack_params = {a: config.attack_params(a).model_dump(mode="json") for a in config.attacks}
    cells = []
    for t, task in enumerate(config.tasks):
        for seed in config.seeds:
            stronger = [task.attacker_data] if task.attacker_data != "aux" else []  # (default: old ids kept)
            for cut in task.cut_points:
                for d, spec in enumerate(config.defenses):
                    for attack in task.attacks or config.attacks:
                        cid = stable_hash(
                            task_key(task, seed), cut, spec.name, defense_params[d],
                            attack, attack_params[attack], config.n_boot, *stronger,
                        )
                        cells.append(Cell(t, seed, cut, d, attack, cid))
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise AuditInputError(f"--shard {text!r}: expected I/N, e.g. --shard 1/2") from None
    if not 1 <= i <= n:
        raise AuditInputError(f"--shard {text!r}: need 1 <= I <= N")
    return i, n


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard ``index`` of ``count`` (1-based): every ``count``-th group of cells in plan order,
    starting at the ``index``-th. Groups are never split (their cells share a defense fit), the
    slices are disjoint, cover the grid, and depend on the config only."""
    groups = list(dict.fromkeys(c.group for c in cells))
    mine = {g for j, g in enumerate(groups) if j % count == index - 1}
    return [c for c in cells if c.group in mine]
