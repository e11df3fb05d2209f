"""The encrypted-inference protocol: the device and the cloud, and the rounds between them.

Layouts (``layout`` parameter of ``he``):

- ``packed``: batch packing plus the diagonal (Halevi-Shoup) layout with
  baby-step/giant-step rotations (see :mod:`defenses.he.packing`). A batch of
  up to ``block`` samples travels in ``chunks`` ciphertexts per round, whatever
  the batch size; the cloud's plaintext diagonals are encoded once and cached
  (within ``cache_bytes``).
- ``naive``: one ciphertext per sample holding its feature vector (chunks of
  N/2 features), and one ciphertext per output element: the cloud multiplies
  by the weight row and sums the slots with log2(P) rotations (TenSEAL's
  ``dot`` pattern). No batching across samples; device rounds only.

Everything that crosses the wire is serialized bytes: the device sends
ciphertext bytes, the cloud deserializes them with its public context,
computes, serializes the results; the device decrypts. ``Traffic`` counts the
bytes, ciphertexts, rotations and the time each side spent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from defenses.he.ckks import CloudCrypto, DeviceCrypto, decrypt_ops, encrypt_ops
from defenses.he.packing import (
    MatVecPlan,
    SlotLayout,
    VectorLayout,
    bias_vector,
    diagonals,
    next_pow2,
    pack,
    plan_matvec,
    spread,
    unpack,
    vector_layout,
)
from defenses.he.program import Schedule


@dataclass
class Traffic:
    """What one protocol run cost (totals over its samples)."""

    samples: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    ciphertexts_up: int = 0
    ciphertexts_down: int = 0
    rotations: int = 0
    device_seconds: float = 0.0
    cloud_seconds: float = 0.0
    crypto_ops: float = 0.0  # estimated device-side encode/encrypt/decrypt/decode operations

    def add(self, other: "Traffic") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class RoundPlan:
    """Public layout metadata of one round, shared by device and cloud. The round's input travels in
    groups of ``slot.block`` samples (one sample per group in the naive layout)."""

    slot: SlotLayout
    inp: VectorLayout
    plans: list[MatVecPlan]  # packed: one per cloud step
    out: VectorLayout  # naive: period 1, one ciphertext per output element

    def plaintexts(self, rnd) -> int:
        """Nonzero diagonals (plaintext multiplications per group) and biases of round ``rnd``'s steps."""
        total = 0
        for step, plan in zip(rnd.steps, self.plans):
            total += plan.out.chunks + sum(int(diagonals(w, plan).any(axis=-1).sum()) for w in step.weights)
        return total

    def rotations(self) -> int:
        return sum(plan.rotations() for plan in self.plans)


@dataclass
class Layouts:
    kind: str  # packed | naive
    rounds: list[RoundPlan]

    def rotation_steps(self) -> set[int]:
        """Rotation steps in slots (the Galois keys the device must generate)."""
        steps: set[int] = set()
        for r in self.rounds:
            if self.kind == "packed":
                for plan in r.plans:
                    steps |= {s * r.slot.block for s in plan.rotation_steps()}
            else:
                p = r.inp.period
                steps |= {p >> i for i in range(1, p.bit_length())}
        return steps


def packed_round(r, slot: SlotLayout) -> RoundPlan:
    inp = vector_layout(r.d_in, slot.m)
    layout, plans = inp, []
    for step in r.steps:
        plan = plan_matvec(step.d_out, layout)
        plans.append(plan)
        layout = plan.out
    return RoundPlan(slot, inp, plans, layout)


# relative costs of SEAL operations at N = 8192 on 2 primes, measured here (0.25 / 2.5 / 1.0 ms)
COST_MUL_PLAIN, COST_ROTATE, COST_ENCODE = 1.0, 10.0, 4.0


def make_layouts(schedule: Schedule, kind: str, slots: int, batch: int, cache_bytes: int, plaintext_bytes) -> Layouts:
    """Per round, the packed layout groups the batch into ciphertexts of ``block`` samples, a power of two
    <= batch chosen to minimise the estimated time per sample: (plaintext multiplications + 10 x rotations
    + 4 x encodings that do not fit the plaintext cache) / block. Small blocks keep a wide layer's encoded
    diagonals within ``cache_bytes`` (encoded once, reused by every batch); big blocks need fewer rotations
    per sample. ``plaintext_bytes(levels)``: one plaintext at the start level of a round needing that many."""
    if kind == "naive":
        rounds = []
        for r in schedule.rounds:
            if len(r.steps) != 1 or r.steps[0].degree != 1:
                raise ValueError("the naive layout evaluates one affine map per round: use activations='device'")
            rounds.append(RoundPlan(SlotLayout(slots, 1), vector_layout(r.d_in, slots), [], VectorLayout(r.d_out, 1, r.d_out)))
        return Layouts(kind, rounds)
    largest = min(next_pow2(batch), slots)
    rounds = []
    for r in schedule.rounds:
        capacity = cache_bytes // plaintext_bytes(r.levels)

        def per_sample(option: RoundPlan) -> float:
            count = option.plaintexts(r)
            uncached = max(0, count - capacity)
            return (count * COST_MUL_PLAIN + option.rotations() * COST_ROTATE + uncached * COST_ENCODE) / option.slot.block

        options = [packed_round(r, SlotLayout(slots, 1 << i)) for i in range(largest.bit_length())]
        rounds.append(min(reversed(options), key=per_sample))  # ties: the bigger block
    return Layouts(kind, rounds)


class Device:
    """The device side: its plaintext layers, packing, encryption and decryption."""

    def __init__(self, crypto: DeviceCrypto, schedule: Schedule, layouts: Layouts):
        self.crypto, self.schedule, self.layouts = crypto, schedule, layouts
        self.start = [crypto.chain.start(r.levels) for r in schedule.rounds]
        self.n = crypto.config.poly_modulus_degree

    def encrypt(self, r: int, x: np.ndarray, traffic: Traffic) -> list[list[bytes]]:
        """Round r's input (B, d) -> ciphertext bytes per group of ``block`` samples (chunks each)."""
        rp = self.layouts.rounds[r]
        groups = []
        for i in range(0, x.shape[0], rp.slot.block):
            groups.append([self.crypto.encrypt(vec, self.start[r]) for vec in pack(x[i : i + rp.slot.block], rp.slot, rp.inp)])
        out = [data for group in groups for data in group]
        primes = self.crypto.chain.n_primes(self.start[r])
        traffic.crypto_ops += len(out) * encrypt_ops(self.n, primes)
        traffic.bytes_up += sum(len(b) for b in out)
        traffic.ciphertexts_up += len(out)
        return groups

    def decrypt(self, r: int, payload: list[list[bytes]], b: int, traffic: Traffic) -> np.ndarray:
        """The cloud's result bytes (per group) -> round r's output (B, d_out)."""
        rp = self.layouts.rounds[r]
        out = []
        for g, group in enumerate(payload):
            vectors = np.stack([self.crypto.decrypt(data) for data in group])
            traffic.crypto_ops += len(group) * decrypt_ops(self.n, 1)
            traffic.bytes_down += sum(len(d) for d in group)
            traffic.ciphertexts_down += len(group)
            n = min(rp.slot.block, b - g * rp.slot.block)
            out.append(unpack(vectors, rp.slot, rp.out, n) if self.layouts.kind == "packed" else vectors[:, 0][None, :])
        return np.concatenate(out)


class Cloud:
    """The cloud side: its weights, the public context and Galois keys (bytes from the device)."""

    def __init__(self, crypto: CloudCrypto, schedule: Schedule, layouts: Layouts, cache_bytes: int):
        self.crypto, self.schedule, self.layouts = crypto, schedule, layouts
        self.cache: dict[tuple, object] = {}
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        self.diagonals: dict[tuple[int, int, int], np.ndarray] = {}
        if layouts.kind == "packed":
            for r, (rnd, rp) in enumerate(zip(schedule.rounds, layouts.rounds)):
                for s, (step, plan) in enumerate(zip(rnd.steps, rp.plans)):
                    for p, w in enumerate(step.weights):
                        self.diagonals[(r, s, p)] = diagonals(w, plan)

    # ----------------------------------------------------------------- plaintexts
    def plaintext(self, key: tuple, values, parms_id, scale: float):
        """Encode ``values()`` at (parms_id, scale); cached under ``key`` while the budget lasts."""
        full = (*key, tuple(parms_id), scale)
        hit = self.cache.get(full)
        if hit is not None:
            return hit
        plain = self.crypto.encode(values(), parms_id, scale)
        size = self.crypto.chain.n_primes(parms_id) * self.crypto.plaintext_bytes_per_prime
        if self.cached_bytes + size <= self.cache_bytes:
            self.cache[full] = plain
            self.cached_bytes += size
        return plain

    # ---------------------------------------------------------------------- round
    def run(self, r: int, payload: list[list[bytes]], traffic: Traffic) -> list[list[bytes]]:
        """Round r on every group of ciphertext bytes; returns the result bytes per group."""
        out = []
        for group in payload:
            cts = [self.crypto.load(data) for data in group]
            res = self._packed_round(r, cts, traffic) if self.layouts.kind == "packed" else self._naive_step(r, cts, traffic)
            out.append([self.crypto.dump(ct) for ct in res])
        return out

    def _packed_round(self, r: int, cts: list, traffic: Traffic) -> list:
        powers = [cts]
        rnd = self.schedule.rounds[r]
        for s, (step, plan) in enumerate(zip(rnd.steps, self.layouts.rounds[r].plans)):
            powers = self._power_inputs(powers[0], step.degree) if s else powers
            out = self._packed_step(r, s, powers, plan, step.bias, traffic)
            powers = [out]
        return powers[0]

    def _power_inputs(self, cts: list, degree: int) -> list[list]:
        """[x, x^2, ..., x^degree] per chunk, all brought to the deepest level."""
        c = self.crypto
        table = [[ct] for ct in cts]
        for row in table:
            for k in range(2, degree + 1):
                a, b = (row[k // 2 - 1], row[k // 2 - 1]) if k % 2 == 0 else (row[k - 2], row[0])
                prod = c.multiply(a, b)
                c.rescale(prod)
                row.append(prod)
            deepest = max(row, key=lambda ct: c.chain.index(ct.parms_id())).parms_id()
            row[:] = [ct if tuple(ct.parms_id()) == tuple(deepest) else c.mod_switch(ct, deepest) for ct in row]
        return [[row[p] for row in table] for p in range(degree)]

    def _packed_step(self, r: int, s: int, powers: list[list], plan: MatVecPlan, bias: np.ndarray, traffic) -> list:
        c, slot = self.crypto, self.layouts.rounds[r].slot
        level = powers[0][0].parms_id()
        target = c.chain.last_prime(level) * c.scale  # every product lands on this scale
        acc = [[None] * plan.n2 for _ in range(plan.out.chunks)]
        for p, chunks in enumerate(powers):
            diag = self.diagonals[(r, s, p)]
            plain_scale = target / chunks[0].scale
            for j, ct in enumerate(chunks):
                babies = [ct] + [c.rotate(ct, b * slot.block) for b in range(1, min(plan.n1, plan.rows))]
                traffic.rotations += len(babies) - 1
                for i in range(plan.out.chunks):
                    for k in range(plan.rows):
                        vec = diag[i, j, k]
                        if not vec.any():
                            continue
                        g, b = divmod(k, plan.n1)
                        plain = self.plaintext((r, s, p, i, j, k), lambda v=vec: spread(v, slot), level, plain_scale)
                        acc[i][g] = self._sum(acc[i][g], c.mul_plain(babies[b], plain, target))
        out = []
        for i in range(plan.out.chunks):
            total = None
            for g, part in enumerate(acc[i]):
                if part is None:
                    continue
                if g:
                    part = c.rotate(part, g * plan.n1 * slot.block)
                    traffic.rotations += 1
                total = self._sum(total, part)
            if total is None:
                raise ValueError(f"output chunk {i} of cloud step {s} (round {r}) has only zero weights")
            c.rescale(total, c.scale)
            for f in plan.folds:
                c.add_inplace(total, c.rotate(total, f * slot.block))
                traffic.rotations += 1
            bvec = bias_vector(bias, plan, i)
            if bvec.any():
                plain = self.plaintext((r, s, "bias", i), lambda v=bvec: spread(v, slot), total.parms_id(), c.scale)
                c.evaluator.add_plain_inplace(total, plain)
            out.append(total)
        return out

    def _sum(self, total, part):
        """total + part (in place), where total may be None (nothing yet)."""
        if total is None:
            return part
        self.crypto.add_inplace(total, part)
        return total

    def _naive_step(self, r: int, chunks: list, traffic: Traffic) -> list:
        """One sample: one output ciphertext per output element (weight row times input, slot sum)."""
        c = self.crypto
        step = self.schedule.rounds[r].steps[0]
        inp = self.layouts.rounds[r].inp
        level = chunks[0].parms_id()
        target = c.chain.last_prime(level) * c.scale
        plain_scale = target / chunks[0].scale
        slot = self.layouts.rounds[r].slot
        out = []
        for row in range(step.d_out):
            total = None
            for j, ct in enumerate(chunks):
                seg = np.zeros(inp.period)
                part = step.weights[0][row, j * inp.period : (j + 1) * inp.period]
                seg[: part.shape[0]] = part
                if not seg.any():
                    continue
                plain = self.plaintext((r, "row", row, j), lambda v=seg: spread(v, slot), level, plain_scale)
                total = self._sum(total, c.mul_plain(ct, plain, target))
            if total is None:
                raise ValueError(f"output {row} of round {r} has only zero weights")
            c.rescale(total, c.scale)
            f = inp.period // 2
            while f >= 1:
                c.add_inplace(total, c.rotate(total, f))
                traffic.rotations += 1
                f //= 2
            plain = self.plaintext((r, "bias", row), lambda b=float(step.bias[row]): b, total.parms_id(), c.scale)
            c.evaluator.add_plain_inplace(total, plain)
            out.append(total)
        return out


class Protocol:
    """Device + cloud for one schedule; ``run`` is encrypted inference on one batch."""

    def __init__(self, device: Device, cloud: Cloud, schedule: Schedule):
        self.device, self.cloud, self.schedule = device, cloud, schedule

    @property
    def block(self) -> int:
        """Samples per group in round 0 (what one ciphertext group of the first message carries)."""
        return self.device.layouts.rounds[0].slot.block

    def upload(self, z: torch.Tensor, traffic: Traffic) -> list[list[bytes]]:
        """Round 0's ciphertext bytes per group for cut features z (B, ...): the device's first message."""
        start = time.perf_counter()
        x = self.schedule.rounds[0].device(z.flatten(1).float()).double().numpy()
        payload = self.device.encrypt(0, x, traffic)
        traffic.device_seconds += time.perf_counter() - start
        return payload

    def run(self, z: torch.Tensor, traffic: Traffic) -> torch.Tensor:
        """Logits (B, K) for cut features z (B, ...), every round encrypted."""
        b = z.shape[0]
        traffic.samples += b
        payload = self.upload(z, traffic)
        y = None  # the device's decrypted result of the previous round
        for r in range(len(self.schedule.rounds)):
            if r:
                start = time.perf_counter()
                x = self.schedule.rounds[r].device(torch.from_numpy(y).float()).double().numpy()
                payload = self.device.encrypt(r, x, traffic)
                traffic.device_seconds += time.perf_counter() - start
            start = time.perf_counter()
            payload = self.cloud.run(r, payload, traffic)
            traffic.cloud_seconds += time.perf_counter() - start
            start = time.perf_counter()
            y = self.device.decrypt(r, payload, b, traffic)
            traffic.device_seconds += time.perf_counter() - start
        start = time.perf_counter()
        logits = self.schedule.trailing(torch.from_numpy(y).float())
        traffic.device_seconds += time.perf_counter() - start
        return logits


@dataclass
class Setup:
    """One-off bytes the device sends before inference: public context and Galois keys."""

    public_context: int
    galois_keys: int
    rotation_steps: list[int] = field(default_factory=list)
