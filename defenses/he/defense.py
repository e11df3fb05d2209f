"""``he``: the PROUD-style crypto baseline (CKKS via TenSEAL).

The device runs the edge part, encrypts the split feature under its CKKS
public key and sends ciphertexts; the cloud evaluates its linear layers on
ciphertexts (batch-packed diagonal layout, see :mod:`defenses.he.packing`) and
returns ciphertexts; non-linear layers run on the device between rounds
(decrypt, apply, re-encrypt: one round each) or, with
``activations: polynomial``, as least-squares polynomials in the cloud. The
cloud is built only from bytes the device sends: the TenSEAL context
serialized without the secret key, and Galois keys for the rotation steps the
program uses. ``predict`` runs the whole protocol, so utility is measured on
decrypted results.

What the cloud sees (``release``): per sample, bytes of the serialized
ciphertexts of its first-round message. In the packed layout a group of
``block`` samples (the samples per ciphertext of the first round; see
:func:`defenses.he.protocol.make_layouts`) travels as one byte stream (the
concatenated ciphertexts); sample s of the group is given the s-th of
``block`` equal parts of that stream (its share of what the cloud received;
together the shares are the whole stream). The released feature is the first W bytes of
the share, W = min(release_bytes, 99% of the nominal share; SEAL's
compression makes a ciphertext's size vary by ~0.2%), as a uint8 vector. In
the naive layout the share is the sample's own ciphertexts. Later rounds
(encrypted activations) are fresh encryptions under the same key; their
bytes are counted in ``cost`` but not released.

Supported cloud parts: see :mod:`defenses.he.program` (Linear / Flatten /
Dropout / Identity / element-wise activations; max-pooling on the device;
Conv/BatchNorm/AvgPool unrolled to dense matrices when small). For
``small_cnn`` that is every cut from the last conv stage on (e.g. conv6,
pool3, fc1 of the UTKFace model; conv1 of the tiny 1-block test model).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from defenses import register_defense
from defenses.base import Defense, FitContext
from defenses.he.ckks import CKKSConfig, CKKSConfigError, CloudCrypto, DeviceCrypto
from defenses.he.program import Layer, Schedule, UnsupportedCloudError, compile_cloud, supported_cuts
from defenses.he.protocol import Cloud, Device, Layouts, Protocol, Traffic, make_layouts

RELEASE_MARGIN = 0.99  # fraction of the nominal per-sample share kept (compressed sizes vary ~0.2%)


def fit_polynomial(layer: Layer, samples: np.ndarray, degree: int, max_points: int = 200_000, seed: int = 0) -> np.ndarray:
    """Least-squares polynomial c_0..c_degree to ``layer``'s activation over its observed inputs."""
    values = samples.reshape(-1)
    if values.size == 0:
        raise ValueError(f"no calibration inputs to fit a polynomial to {layer.name!r}")
    if values.size > max_points:
        values = np.random.default_rng(seed).choice(values, max_points, replace=False)
    with torch.no_grad():
        target = layer.module(torch.from_numpy(values).float()).double().numpy()
    return np.polynomial.polynomial.polyfit(values, target, degree)


@dataclass
class Session:
    """Everything ``he`` builds for one cloud part: the schedule, layouts, keys and the protocol."""

    ckks: CKKSConfig
    schedule: Schedule
    layouts: Layouts
    device_crypto: DeviceCrypto
    cloud_crypto: CloudCrypto
    protocol: Protocol


def build_session(cloud: nn.Module, sample: torch.Tensor, p: "HomomorphicEncryption.Params",
                  calibration: torch.Tensor | None = None, seed: int = 0) -> Session:
    """Compile ``cloud`` (on cut features shaped like ``sample`` (1, ...)), make the device's keys and
    the cloud's evaluator from the device's public bytes. Raises UnsupportedCloudError / CKKSConfigError."""
    ckks = CKKSConfig(p.poly_modulus_degree, tuple(p.coeff_mod_bit_sizes), p.scale_bits)
    if p.poly_modulus_degree < 1024 or p.poly_modulus_degree & (p.poly_modulus_degree - 1):
        raise CKKSConfigError(f"poly_modulus_degree must be a power of two >= 1024, got {p.poly_modulus_degree}")
    polynomial = None
    if p.activations == "polynomial":
        if calibration is None:
            raise ValueError("activations='polynomial' needs calibration features to fit the polynomials")
        polynomial = lambda layer, xs: fit_polynomial(layer, xs, p.poly_degree, seed=seed)  # noqa: E731
    schedule = compile_cloud(cloud, sample, p.max_dense_elements, polynomial, calibration)
    if schedule.levels > ckks.levels:
        raise CKKSConfigError(
            f"the cloud program needs {schedule.levels} multiplicative levels per round but "
            f"{ckks.describe()} gives {ckks.levels}; add 40-bit primes (e.g. poly_modulus_degree 16384, "
            f"coeff_mod_bit_sizes [60, {', '.join(['40'] * schedule.levels)}, 60]) or use activations: device"
        )
    if calibration is not None:
        with torch.no_grad():
            exact = cloud(calibration).argmax(1)
        approx = schedule.plaintext(calibration).argmax(1)
        schedule.polynomials["calibration_agreement"] = {"value": float((exact == approx).float().mean())}
    cache_bytes = int(p.plaintext_cache_mb * 2**20)
    layouts = make_layouts(
        schedule, p.layout, ckks.slots, p.batch_size, cache_bytes,
        plaintext_bytes=lambda levels: (levels + 1) * ckks.poly_modulus_degree * 8,
    )
    device = DeviceCrypto(ckks, layouts.rotation_steps(), relin_keys=p.activations == "polynomial")
    # the cloud is built from bytes only: the public context and the Galois keys
    cloud_crypto = CloudCrypto(device.public_context, device.galois_bytes, ckks.scale)
    protocol = Protocol(
        Device(device, schedule, layouts),
        Cloud(cloud_crypto, schedule, layouts, cache_bytes),
        schedule,
    )
    return Session(ckks, schedule, layouts, device, cloud_crypto, protocol)


@register_defense("he")
class HomomorphicEncryption(Defense):
    """CKKS (TenSEAL) encryption of the split feature; the cloud's linear layers run on ciphertexts."""

    class Params(Defense.Params):
        poly_modulus_degree: int = Field(8192, description="CKKS ring dimension N (power of two); N/2 slots per ciphertext")
        coeff_mod_bit_sizes: list[int] = Field(
            default_factory=lambda: [60, 40, 40, 60],
            description="bits of the coefficient-modulus primes; len - 2 = multiplicative levels per round",
        )
        scale_bits: int = Field(40, ge=10, le=60, description="CKKS encoding scale 2^scale_bits")
        layout: Literal["packed", "naive"] = Field(
            "packed", description="packed: batch-packed diagonal layout (BSGS rotations); naive: one ciphertext "
            "per sample in, one per output element out",
        )
        batch_size: int = Field(
            64, ge=1, description="samples per ciphertext in the packed layout (rounded up to a power of two)")
        activations: Literal["device", "polynomial"] = Field(
            "device", description="device: a round trip per non-linear layer (exact); polynomial: least-squares "
            "polynomial in the cloud (needs more levels)",
        )
        poly_degree: int = Field(2, ge=2, le=4, description="degree of the activation polynomial")
        calibration_samples: int = Field(512, ge=1, description="task-train samples for the polynomial fit")
        max_dense_elements: int = Field(2**24, ge=1, description="largest conv/pool layer (in x out) unrolled to a dense matrix")
        plaintext_cache_mb: float = Field(512.0, ge=0, description="memory for the cloud's encoded weight plaintexts")
        release_bytes: int | None = Field(
            32768, ge=1, description="bytes of each sample's ciphertext share released to the attacks (None: all)",
        )

    # ------------------------------------------------------------------- fitting
    def fit(self, ctx: FitContext) -> None:
        p = self.params
        self.edge, self.cloud = ctx.split.edge.eval(), ctx.split.cloud.eval()
        with torch.no_grad():
            sample = self.edge(ctx.train.x[:1])
        calibration = ctx.split.features("train")[: p.calibration_samples] if p.activations == "polynomial" else None
        try:
            session = build_session(self.cloud, sample, p, calibration, seed=ctx.seed)
        except UnsupportedCloudError as err:
            ok = supported_cuts(ctx.split.model, ctx.train.x[:1], p.max_dense_elements)
            raise UnsupportedCloudError(
                f"he cannot evaluate the cloud part after cut {ctx.split.cut_point!r}: {err}; cut points of "
                f"{ctx.split.model.model_name} where he applies: {', '.join(ok) or '(none)'}"
            ) from None
        self.ckks, self.schedule, self.layouts = session.ckks, session.schedule, session.layouts
        self.device_crypto, self.protocol = session.device_crypto, session.protocol
        self.rounds = len(self.schedule.rounds)
        self.block = self.protocol.block
        self.agreement = [0, 0]  # predictions equal to plaintext inference, predictions made
        self.max_logit_error = 0.0
        nominal = sum(len(b) for b in self.protocol.upload(torch.zeros_like(sample), Traffic())[0])
        share = nominal // self.block
        self.release_width = int(share * RELEASE_MARGIN)
        if p.release_bytes is not None:
            self.release_width = min(self.release_width, p.release_bytes)

    # ----------------------------------------------------------------- inference
    def _features(self, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        if features is not None:
            return features
        with torch.no_grad():
            return self.edge(x)

    @torch.no_grad()
    def release(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(N, W) uint8: each sample's share of the round-1 ciphertext bytes (see the module doc)."""
        z = self._features(x, features)
        rows = []
        for i in range(0, z.shape[0], self.params.batch_size):
            groups = self.protocol.upload(z[i : i + self.params.batch_size], Traffic())
            for g, group in enumerate(groups):
                stream = b"".join(group)
                for s in range(min(self.block, z.shape[0] - i - g * self.block)):
                    start = s * len(stream) // self.block
                    window = stream[start : start + self.release_width]
                    if len(window) < self.release_width:
                        raise RuntimeError(f"ciphertext stream of {len(stream)} bytes shorter than expected")
                    rows.append(np.frombuffer(window, dtype=np.uint8))
        return torch.from_numpy(np.stack(rows).copy())

    def query_copy(self, seed: int) -> "HomomorphicEncryption":
        """The release channel as the cloud can run it itself: the same edge and round-1 encoding, with
        encryption under the device's public key rebuilt from its public bytes. It holds no secret key
        and no decryptor, so it can release (encrypt) but not predict. ``seed``: unused (SEAL draws the
        encryption randomness itself)."""
        twin = copy.copy(self)
        twin.device_crypto = self.device_crypto.public_encryptor()
        twin.protocol = Protocol(Device(twin.device_crypto, self.schedule, self.layouts), self.protocol.cloud,
                                 self.schedule)
        twin.agreement, twin.max_logit_error = [0, 0], 0.0
        return twin

    @torch.no_grad()
    def predict(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits through encryption, the cloud's encrypted evaluation and decryption (batches of batch_size)."""
        z = self._features(x, features)
        out = []
        for i in range(0, z.shape[0], self.params.batch_size):
            out.append(self.protocol.run(z[i : i + self.params.batch_size], Traffic()))
        logits = torch.cat(out).float()
        plain = self.cloud(z)
        self.agreement[0] += int((plain.argmax(1) == logits.argmax(1)).sum())
        self.agreement[1] += z.shape[0]
        self.max_logit_error = max(self.max_logit_error, float((plain - logits).abs().max()))
        return logits

    def infer(self, released: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "he's cloud computation needs the device between rounds and ciphertexts, not released bytes; use predict"
        )

    def bytes_per_sample(self, released: torch.Tensor) -> int:
        return int(released.shape[1])

    # ---------------------------------------------------------------------- cost
    def cost(self, x: torch.Tensor, full_flops: int) -> dict[str, Any]:
        """Cost of one full batch (``x`` repeated to batch_size samples; naive layout: 8 samples).

        ``edge_flops`` = the edge part and the device's plaintext layers (torch's flop counter) plus an
        estimate of the device's CKKS work (encode/encrypt/decrypt/decode operations, see
        :func:`defenses.he.ckks.encrypt_ops`), per sample. Latencies per sample: edge = edge part + every
        device step of the protocol; cloud = deserialization, encrypted evaluation, serialization.
        ``bytes_sent`` / ``bytes_received``: ciphertext bytes per sample over all rounds; ``setup_bytes``:
        the one-off public context and Galois keys."""
        n = self.params.batch_size if self.params.layout == "packed" else min(8, self.params.batch_size)
        xb = x[torch.arange(n) % x.shape[0]]
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                z1 = self.edge(xb[:1])
                self.schedule.plaintext(z1)  # counts only the device's torch layers (the affine maps are numpy)
            model_flops = int(counter.get_total_flops())
            start = time.perf_counter()
            z = self.edge(xb)
            edge_seconds = time.perf_counter() - start
        traffic = Traffic()
        self.protocol.run(z, traffic)
        crypto = traffic.crypto_ops / n
        edge_flops = int(model_flops + crypto)
        agree, total = self.agreement
        return {
            "edge_flops": edge_flops,
            "edge_flops_fraction": edge_flops / full_flops if full_flops else None,
            "edge_flops_model": model_flops,
            "edge_ops_crypto": int(crypto),
            "bytes_sent": int(traffic.bytes_up / n),
            "bytes_received": int(traffic.bytes_down / n),
            "setup_bytes": len(self.device_crypto.public_context) + len(self.device_crypto.galois_bytes),
            "edge_latency_ms": 1000 * (edge_seconds + traffic.device_seconds) / n,
            "cloud_latency_ms": 1000 * traffic.cloud_seconds / n,
            "rounds": self.rounds,
            "batch": n,
            "samples_per_ciphertext": self.block,
            "ciphertexts_per_sample": (traffic.ciphertexts_up + traffic.ciphertexts_down) / n,
            "rotations_per_sample": traffic.rotations / n,
            "galois_keys": len(self.device_crypto.rotation_steps),
            "plaintext_agreement": agree / total if total else None,
            "plaintext_agreement_n": total,
            "max_logit_error": self.max_logit_error if total else None,
            "released_bytes_per_sample": self.release_width,
        }


def describe_schedule(schedule: Schedule) -> list[str]:
    """One line per round: device layers, cloud steps with their shapes."""
    lines = []
    for i, r in enumerate(schedule.rounds):
        steps = ", ".join(f"{'+'.join(s.names)} {s.d_in}->{s.d_out} (deg {s.degree})" for s in r.steps)
        lines.append(f"round {i}: device [{', '.join(r.device.names)}] cloud [{steps}]")
    lines.append(f"after: device [{', '.join(schedule.trailing.names)}]")
    return lines

