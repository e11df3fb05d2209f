"""Slot layouts and the diagonal (Halevi-Shoup) matrix-vector plan, in numpy.

Batch packing. A ciphertext has ``slots`` = N/2 slots, grouped into ``m`` =
slots / ``block`` *super-slots* of ``block`` consecutive slots; super-slot t
holds one feature for ``block`` samples (slot t * block + s is sample s).
Rotating a ciphertext by k * block slots rotates the super-slots by k and
never mixes samples, so every product below runs on ``block`` samples at once.

A vector of ``dim`` features sits in ``chunks`` ciphertexts with a *period* P
(a power of two <= m): chunk j holds features j*P .. j*P+P-1 in super-slots
0..P-1, repeated m / P times across the ciphertext (so that rotations are
cyclic modulo P). Short vectors get one chunk, P = next power of two >= dim;
long ones get P = m.

Matrix-vector product y = W x (W: d_out x d_in), per output chunk i:
- *square* case (d_out > P): block A = W[iP:(i+1)P, jP:(j+1)P] and its P
  diagonals d_k[t] = A[t, (t+k) mod P]; y_i = sum_j sum_k d_k * rot(x_j, k).
- *folded* case (d_out <= P, Halevi-Shoup's hybrid for short outputs): h =
  next power of two >= d_out rows, h extended diagonals d_k[t] = A[t mod h,
  (t+k) mod P] of length P; z = sum_k d_k * rot(x_j, k) holds partial sums
  whose total over t = r (mod h) is y[r]; folding z += rot(z, f) for
  f = P/2, P/4, ..., h leaves y replicated with period h.
Baby-step/giant-step: k = g*n1 + b; sum_k d_k * rot(x, k) =
sum_g rot(sum_b rot(d_k, -g*n1) * rot(x, b), g*n1), so only n1 - 1 baby
rotations per input chunk and n2 - 1 giant rotations per output chunk are
needed; the diagonals are pre-rotated in the clear.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def next_pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


@dataclass(frozen=True)
class SlotLayout:
    """``slots`` per ciphertext in super-slots of ``block`` samples."""

    slots: int
    block: int

    def __post_init__(self):
        if self.block & (self.block - 1) or not 1 <= self.block <= self.slots:
            raise ValueError(f"block {self.block} must be a power of two between 1 and {self.slots}")

    @property
    def m(self) -> int:
        return self.slots // self.block


@dataclass(frozen=True)
class VectorLayout:
    """``dim`` features in ``chunks`` ciphertexts of period ``period``."""

    dim: int
    period: int
    chunks: int


def vector_layout(dim: int, m: int) -> VectorLayout:
    period = min(m, next_pow2(dim))
    return VectorLayout(dim, period, math.ceil(dim / period))


def pack(x: np.ndarray, slot: SlotLayout, layout: VectorLayout) -> np.ndarray:
    """(B, dim) values -> (chunks, slots) slot vectors (B <= block; empty sample slots are 0)."""
    b, dim = x.shape
    if b > slot.block or dim != layout.dim:
        raise ValueError(f"cannot pack {tuple(x.shape)} into blocks of {slot.block} x {layout.dim} features")
    padded = np.zeros((b, layout.chunks * layout.period))
    padded[:, :dim] = x
    cells = np.zeros((layout.chunks, layout.period, slot.block))
    cells[:, :, :b] = padded.reshape(b, layout.chunks, layout.period).transpose(1, 2, 0)
    return np.tile(cells, (1, slot.m // layout.period, 1)).reshape(layout.chunks, slot.slots)


def unpack(vectors: np.ndarray, slot: SlotLayout, layout: VectorLayout, b: int) -> np.ndarray:
    """(chunks, slots) decrypted slot vectors -> (B, dim) values (the first period of each chunk)."""
    cells = vectors.reshape(layout.chunks, slot.m, slot.block)[:, : layout.period, :b]
    return cells.transpose(2, 0, 1).reshape(b, layout.chunks * layout.period)[:, : layout.dim]


def spread(vector: np.ndarray, slot: SlotLayout) -> np.ndarray:
    """A period-P vector (P,) -> slot vector (slots,): repeated across super-slots, each value over its block."""
    return np.repeat(np.tile(vector, slot.m // vector.shape[0]), slot.block)


@dataclass(frozen=True)
class MatVecPlan:
    """How one dense layer runs on a packed input: diagonals per block (``rows``), BSGS split, folds."""

    d_in: int
    d_out: int
    inp: VectorLayout
    out: VectorLayout
    rows: int  # rows per output block: h (folded) or P (square); also the number of diagonals
    n1: int  # baby steps
    n2: int  # giant steps
    folds: tuple[int, ...]  # fold rotations (super-slots), after the giant steps

    def rotation_steps(self) -> set[int]:
        """Rotation steps in super-slots (multiply by the block for slots)."""
        steps = set(range(1, min(self.n1, self.rows)))
        steps |= {g * self.n1 for g in range(1, self.n2)}
        return steps | set(self.folds)

    def rotations(self) -> int:
        """Ciphertext rotations per evaluation (one group of ``block`` samples)."""
        return self.inp.chunks * (min(self.n1, self.rows) - 1) + self.out.chunks * (self.n2 - 1 + len(self.folds))

    def plaintexts(self, powers: int = 1) -> int:
        """Encoded plaintexts the cloud needs: one per diagonal, block and input power, plus the biases."""
        return powers * self.out.chunks * self.inp.chunks * self.rows + self.out.chunks


def plan_matvec(d_out: int, inp: VectorLayout) -> MatVecPlan:
    """Plan y = W x for W (d_out, inp.dim); the baby-step count n1 (a power of two) minimises the
    rotations in_chunks * (n1 - 1) + out_chunks * (n2 - 1)."""
    p = inp.period
    if d_out <= p:
        rows = next_pow2(d_out)
        out = VectorLayout(d_out, rows, 1)
        folds = tuple(p >> i for i in range(1, int(math.log2(p // rows)) + 1))
    else:
        rows = p
        out = VectorLayout(d_out, p, math.ceil(d_out / p))
        folds = ()
    candidates = [1 << i for i in range(int(math.log2(rows)) + 1)]
    n1 = min(candidates, key=lambda n: (inp.chunks * (n - 1) + out.chunks * (math.ceil(rows / n) - 1), n))
    return MatVecPlan(inp.dim, d_out, inp, out, rows, n1, math.ceil(rows / n1), folds)


def diagonals(weight: np.ndarray, plan: MatVecPlan) -> np.ndarray:
    """Pre-rotated BSGS diagonals of W (d_out, d_in): array (out chunks, in chunks, rows, P) where
    entry [i, j, g*n1 + b] is rot(d_k, -g*n1) of block (i, j), k = g*n1 + b."""
    p, rows = plan.inp.period, plan.rows
    full = np.zeros((plan.out.chunks * rows, plan.inp.chunks * p))
    full[: plan.d_out, : plan.d_in] = weight
    blocks = full.reshape(plan.out.chunks, rows, plan.inp.chunks, p).transpose(0, 2, 1, 3)
    t = np.arange(p)
    k = np.arange(rows)
    g_shift = (k // plan.n1) * plan.n1  # giant offset of diagonal k
    src_t = (t[None, :] - g_shift[:, None]) % p  # pre-rotation: d'[t] = d_k[t - g*n1]
    return blocks[:, :, src_t % rows, (src_t + k[:, None]) % p]


def bias_vector(bias: np.ndarray, plan: MatVecPlan, chunk: int) -> np.ndarray:
    """Output chunk ``chunk``'s bias as a period vector (out period,)."""
    period = plan.out.period
    vec = np.zeros(period)
    part = bias[chunk * period : (chunk + 1) * period]
    vec[: part.shape[0]] = part
    return vec
