"""CKKS key material and primitives for ``he`` (TenSEAL 0.3.18 and the SEAL API it ships).

TenSEAL's :class:`tenseal.Context` generates and holds the keys; the evaluation
uses ``tenseal.sealapi`` (SEAL's own encoder, encryptor, evaluator), because
TenSEAL's vector API has no rotation by an arbitrary step and generates either
no Galois keys or all of them (33 MB at N = 8192).

- :class:`DeviceCrypto` lives on the device: the private context (secret
  key), the encoder/encryptor/decryptor, and the bytes it hands to the cloud
  once: the context serialized *without* the secret key
  (``serialize(save_secret_key=False)``) and Galois keys for exactly the
  rotation steps the cloud program uses (SEAL addresses a rotation key by its
  Galois element 3^step mod 2N, not by the step).
- :class:`CloudCrypto` is built from those bytes only; it refuses a context
  that holds a secret key. So is :class:`PublicEncryptor` (encryption only),
  which answers the attacker's queries of the release channel.

Ciphertexts cross the wire as SEAL's own serialization (``Ciphertext.save``,
zstd-compressed when SEAL was built with it); SEAL's Python binding saves to a
path, so (de)serialization goes through a private scratch folder in /dev/shm
(named with the pid; folders of processes that died without cleaning up are removed).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal


class CKKSConfigError(ValueError):
    """CKKS parameters that SEAL rejects or that cannot run the cloud program."""


@dataclass(frozen=True)
class CKKSConfig:
    """CKKS parameters: ring dimension N, coefficient-modulus primes (bits; the last one is the
    special key-switching prime), and the encoding scale 2^scale_bits."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def levels(self) -> int:
        """Rescalings available to a fresh ciphertext (multiplicative depth)."""
        return len(self.coeff_mod_bit_sizes) - 2

    def describe(self) -> str:
        return f"N={self.poly_modulus_degree}, coeff_mod_bit_sizes={list(self.coeff_mod_bit_sizes)}, scale=2^{self.scale_bits}"


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation of the slot vector by ``step``: 3^step mod 2N."""
    slots = poly_modulus_degree // 2
    return pow(3, step % slots, 2 * poly_modulus_degree)


SCRATCH_PREFIX = "splitaudit-he-"
_SCRATCH_NAME = re.compile(re.escape(SCRATCH_PREFIX) + r"([0-9]+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_scratch(base: str | None) -> list[str]:
    """Remove scratch folders under ``base`` (default: the temp folder) left by processes that are gone
    (killed with SIGKILL, so ``close`` never ran); the owner's pid is in the folder name. Returns their paths."""
    base = base or tempfile.gettempdir()
    removed = []
    try:
        entries = os.listdir(base)
    except OSError:
        return removed
    for name in entries:
        m = _SCRATCH_NAME.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            path = os.path.join(base, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class Scratch:
    """A private folder (in /dev/shm when it exists) for SEAL's path-based save/load.

    Its name carries this process's pid; creating one first removes the folders of dead processes."""

    def __init__(self):
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        remove_stale_scratch(base)
        self.dir = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base)
        self.path = os.path.join(self.dir, "obj.bin")

    def dump(self, obj) -> bytes:
        """SEAL object -> its serialized bytes."""
        obj.save(self.path)
        with open(self.path, "rb") as f:
            return f.read()

    def load(self, obj, context, data: bytes):
        """Fill SEAL object ``obj`` from ``data`` (validated by SEAL against ``context``)."""
        with open(self.path, "wb") as f:
            f.write(data)
        obj.load(context, self.path)
        return obj

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self):  # best effort; the folder is tiny
        self.close()


class _Chain:
    """The modulus-switching chain of a SEAL context, top data level first."""

    def __init__(self, seal_context):
        self.parms_ids: list = []
        self.primes: list[list[int]] = []
        data = seal_context.first_context_data()
        while data is not None:
            self.parms_ids.append(data.parms_id())
            self.primes.append([m.value() for m in data.parms().coeff_modulus()])
            data = data.next_context_data()
        self._index = {tuple(p): i for i, p in enumerate(self.parms_ids)}

    def index(self, parms_id) -> int:
        return self._index[tuple(parms_id)]

    def start(self, levels: int):
        """parms_id of the level with exactly ``levels`` rescalings left (a round needing that many)."""
        return self.parms_ids[len(self.parms_ids) - 1 - levels]

    def last_prime(self, parms_id) -> int:
        """The prime a rescale at this level divides by."""
        return self.primes[self.index(parms_id)][-1]

    def n_primes(self, parms_id) -> int:
        return len(self.primes[self.index(parms_id)])


class PublicEncryptor:
    """Encryption under the device's public key, and nothing more: what anyone holding the public
    context can do (the attacker's queries of the release channel). No decryptor, no secret key."""

    def __init__(self, config: CKKSConfig, context: "ts.Context"):
        self.config = config
        self.context = context
        sc = context.seal_context().data
        self.seal_context = sc
        self.chain = _Chain(sc)
        self.encoder = seal.CKKSEncoder(sc)
        self.encryptor = seal.Encryptor(sc, context.public_key().data)
        self.scratch = Scratch()

    @classmethod
    def from_public_bytes(cls, config: CKKSConfig, public_context: bytes) -> "PublicEncryptor":
        """Built from the serialized public context; refuses one that holds the secret key."""
        context = ts.context_from(public_context)
        if context.is_private() or context.has_secret_key():
            raise ValueError("a public encryptor was handed a context holding the secret key")
        return cls(config, context)

    def encrypt(self, values: np.ndarray, parms_id) -> bytes:
        """Encode a slot vector (slots,) at scale 2^scale_bits on level ``parms_id``, encrypt with the
        public key and serialize: what crosses the wire."""
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), parms_id, self.config.scale, plain)
        ct = seal.Ciphertext()
        self.encryptor.encrypt(plain, ct)
        return self.scratch.dump(ct)


class DeviceCrypto(PublicEncryptor):
    """The device's keys: encrypts slot vectors, decrypts results, hands the cloud its public bytes."""

    def __init__(self, config: CKKSConfig, rotation_steps: Iterable[int], relin_keys: bool):
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS, config.poly_modulus_degree,
                coeff_mod_bit_sizes=list(config.coeff_mod_bit_sizes),
            )
        except ValueError as err:
            raise CKKSConfigError(
                f"SEAL rejects CKKS parameters {config.describe()} ({err}); at 128-bit security the "
                "coefficient modulus may total at most 109/218/438/881 bits for N=4096/8192/16384/32768"
            ) from None
        ctx.global_scale = config.scale
        super().__init__(config, ctx)
        sc = self.seal_context
        self.decryptor = seal.Decryptor(sc, ctx.secret_key().data)
        self.rotation_steps = sorted({s % config.slots for s in rotation_steps} - {0})
        self.galois_bytes = b""
        if self.rotation_steps:
            keys = seal.GaloisKeys()
            elements = [galois_element(s, config.poly_modulus_degree) for s in self.rotation_steps]
            seal.KeyGenerator(sc, ctx.secret_key().data).create_galois_keys(elements, keys)
            self.galois_bytes = self.scratch.dump(keys)
        self.public_context = ctx.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=relin_keys
        )

    def public_encryptor(self) -> PublicEncryptor:
        """An encryptor built from this device's public bytes only (the secret key stays here)."""
        return PublicEncryptor.from_public_bytes(self.config, self.public_context)

    def decrypt(self, data: bytes) -> np.ndarray:
        """Deserialize a ciphertext from the cloud and decrypt it to its slot vector (slots,)."""
        ct = self.scratch.load(seal.Ciphertext(), self.seal_context, data)
        plain = seal.Plaintext()
        self.decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain))


class CloudCrypto:
    """The cloud's evaluator, built from the device's public bytes only (no secret key)."""

    def __init__(self, public_context: bytes, galois_bytes: bytes, scale: float):
        ctx = ts.context_from(public_context)
        if ctx.is_private() or ctx.has_secret_key():
            raise ValueError("the cloud was handed a context holding the secret key")
        self.context = ctx
        sc = ctx.seal_context().data
        self.seal_context = sc
        self.chain = _Chain(sc)
        self.scale = scale
        self.slots = seal.CKKSEncoder(sc).slot_count()
        self.encoder = seal.CKKSEncoder(sc)
        self.evaluator = seal.Evaluator(sc)
        self.relin_keys = ctx.relin_keys().data if ctx.has_relin_keys() else None
        self.scratch = Scratch()
        self.galois_keys = self.scratch.load(seal.GaloisKeys(), sc, galois_bytes) if galois_bytes else None

    @cached_property
    def plaintext_bytes_per_prime(self) -> int:
        return 8 * 2 * self.slots

    def load(self, data: bytes):
        return self.scratch.load(seal.Ciphertext(), self.seal_context, data)

    def dump(self, ct) -> bytes:
        return self.scratch.dump(ct)

    def encode(self, values: np.ndarray | float, parms_id, scale: float):
        plain = seal.Plaintext()
        if isinstance(values, float):
            self.encoder.encode(values, parms_id, scale, plain)
        else:
            self.encoder.encode(values.tolist(), parms_id, scale, plain)
        return plain

    def rotate(self, ct, step: int):
        out = seal.Ciphertext()
        self.evaluator.rotate_vector(ct, step % self.slots, self.galois_keys, out)
        return out

    def mul_plain(self, ct, plain, scale: float):
        """ct * plain with the result's scale pinned to ``scale`` (equal to the product up to
        rounding), so that products from inputs of different scales add exactly."""
        out = seal.Ciphertext()
        self.evaluator.multiply_plain(ct, plain, out)
        out.scale = scale
        return out

    def add_inplace(self, acc, ct) -> None:
        self.evaluator.add_inplace(acc, ct)

    def rescale(self, ct, scale: float | None = None) -> None:
        """Rescale in place (divide by the level's last prime); pin the scale to ``scale`` if given."""
        self.evaluator.rescale_to_next_inplace(ct)
        if scale is not None:
            ct.scale = scale

    def multiply(self, a, b):
        """a * b, relinearized (needs the relinearization keys: polynomial activations)."""
        if self.relin_keys is None:
            raise ValueError("ciphertext multiplication needs relinearization keys the device did not send")
        a, b = self.same_level(a, b)
        out = seal.Ciphertext()
        self.evaluator.multiply(a, b, out)
        self.evaluator.relinearize_inplace(out, self.relin_keys)
        return out

    def same_level(self, a, b):
        ia, ib = self.chain.index(a.parms_id()), self.chain.index(b.parms_id())
        if ia < ib:
            a = self.mod_switch(a, b.parms_id())
        elif ib < ia:
            b = self.mod_switch(b, a.parms_id())
        return a, b

    def mod_switch(self, ct, parms_id):
        out = seal.Ciphertext()
        self.evaluator.mod_switch_to(ct, parms_id, out)
        return out


# ------------------------------------------------------------------ operation counts
def ntt_ops(n: int) -> float:
    """Arithmetic operations of one length-n number-theoretic transform (n/2 log2 n butterflies,
    each one modular multiplication and two modular additions)."""
    return 1.5 * n * math.log2(n)


def fft_ops(slots: int) -> float:
    """Real floating-point operations of CKKS's canonical-embedding FFT over ``slots`` complex values."""
    return 5.0 * slots * math.log2(slots)


def encrypt_ops(n: int, primes: int) -> float:
    """Estimated operations to encode and public-key encrypt one ciphertext with ``primes`` RNS primes:
    the FFT, an NTT of the plaintext and of u, e0, e1 per prime, two products and three sums per prime."""
    return fft_ops(n // 2) + primes * (4 * ntt_ops(n) + 5 * n)


def decrypt_ops(n: int, primes: int) -> float:
    """Estimated operations to decrypt and decode one ciphertext: c0 + c1*s and an inverse NTT per
    prime, CRT composition (~n * primes^2) and the FFT."""
    return primes * (2 * n + ntt_ops(n)) + n * primes**2 + fft_ops(n // 2)
