"""Feature arrays on disk: extracted once, memory-mapped when large.

Edge features of one (task, cut point, split) are computed once by the driver
and written as a ``.npy`` file (float32, shape (N, ...)) under the run's
``features/`` folder, via a temporary file and a rename, so a killed run never
leaves half a file behind. Every process that needs them opens the same file:
arrays up to ``max_ram_mb`` are read into RAM, larger ones are memory-mapped
(copy-on-write: a plugin may write into its tensor without touching the file
or other processes), so the operating system keeps in memory only the pages
in use and processes on one machine share them through the page cache.

Beside each file, ``<split>.npy.sha256`` records its SHA-256 at write time; a
file is reused (resume, ``memory.keep_features``) only when it still matches,
and is otherwise computed again (an edited feature file never feeds an attack).

Released features of a (cut point, defense) group are written the same way
into a scratch file that is unlinked as soon as it is mapped, so it
disappears with the last tensor that uses it.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import logging
import mmap
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from audit.core.errors import reserve_file_space
from audit.core.heap import trim
from audit.core.paths import inside
from audit.core.profile import resident_bytes
from audit.core.store import atomic_write

MB = 1 << 20
log = logging.getLogger("splitaudit")


class Rows:
    """Row-wise concatenation of tensors, copied only as sliced: ``Rows(a, b)[i:j]`` equals
    ``torch.cat([a, b])[i:j]`` without materialising the whole (memory-mapped features stay on disk)."""

    def __init__(self, *parts: torch.Tensor):
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("Rows supports contiguous slices only")
        pieces, offset = [], 0
        for part in self.parts:
            n = part.shape[0]
            a, b = max(start - offset, 0), min(stop - offset, n)
            if a < b:
                pieces.append(part[a:b])
            offset += n
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces) if pieces else self.parts[0][:0]


class SlowLoop:
    """Progress of a loop over ``n`` samples: once it has run ``after`` seconds, every finished batch
    logs 'LABEL: k/n samples (elapsed, ~left)'. Quick loops stay silent; an encrypted or very large
    split says where it is. No title: silent."""

    after = 30.0  # seconds of silence before the first line

    def __init__(self, title: str | None, n: int):
        self.title, self.n = title, n
        self.start = time.perf_counter()

    def done(self, k: int) -> None:
        elapsed = time.perf_counter() - self.start
        if self.title is not None and elapsed >= self.after and k > 0:
            log.info("%s: %d/%d samples (%.0fs, ~%.0fs left)", self.title, k, self.n, elapsed,
                     elapsed / k * (self.n - k))

_NUMPY_DTYPES = {
    torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
    torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
    torch.uint8: np.uint8, torch.bool: np.bool_,
}


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    try:
        return np.dtype(_NUMPY_DTYPES[dtype])
    except KeyError:
        raise TypeError(f"cannot store {dtype} tensors on disk (supported: {sorted(map(str, _NUMPY_DTYPES))})") from None


def open_array(path: Path, max_ram_mb: float) -> torch.Tensor:
    """The ``.npy`` file at ``path`` as a tensor: read into RAM when at most ``max_ram_mb``,
    else memory-mapped copy-on-write."""
    path = Path(path)
    if path.stat().st_size <= max_ram_mb * MB:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    return tracked(np.load(path, mmap_mode="c", allow_pickle=False))


def is_mapped(t: torch.Tensor) -> bool:
    """True when ``t``'s memory is a file mapping (Linux ``/proc/self/maps``), not process memory."""
    address = t.data_ptr()
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split(maxsplit=5)
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= address < hi:
                return len(fields) == 6 and fields[5].startswith("/")
    return False


MADV_DONTNEED = 4  # <sys/mman.h>, Linux
_MAPPINGS: dict[int, int] = {}  # start -> end address of this process's live feature-file mappings


def tracked(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)``; a memory-mapped ``array`` is registered for :func:`release_pages`
    until it is unmapped."""
    mm = getattr(array, "_mmap", None)
    if isinstance(array, np.memmap) and mm is not None:
        lo = array.ctypes.data - array.offset % mmap.ALLOCATIONGRANULARITY
        _MAPPINGS[lo] = lo + len(mm)
        weakref.finalize(array, _MAPPINGS.pop, lo, None)
    return torch.from_numpy(array)


def _anonymous_kb(starts: set[int]) -> dict[int, int]:
    """The ``Anonymous`` kB (pages copied on write) of this process's mappings starting at ``starts``."""
    out, current = {}, None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            if line[0] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:  # a mapping's first line
                start = int(line.split("-", 1)[0], 16)
                current = start if start in starts else None
            elif current is not None and line.startswith("Anonymous:"):
                out[current] = int(line.split()[1])
    return out


# PAGEMAP_SCAN (Linux 6.7+): which pages of an address range are present and not file-backed, i.e. copied on
# write into a private file mapping. It walks only the range, where reading /proc/self/smaps walks every
# mapping of the process (33 ms of the 58 ms a release took at UTKFace conv1, ~250 releases per attribute fit).
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg), 96 bytes
PAGE_IS_FILE, PAGE_IS_PRESENT = 1 << 2, 1 << 3


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


_PAGEMAP: list = []  # [file descriptor of /proc/self/pagemap, or None where PAGEMAP_SCAN is missing]


def _has_copied_pages(lo: int, hi: int) -> bool | None:
    """Whether [lo, hi) holds a present page that is not the file's (PAGEMAP_SCAN); None where the kernel
    cannot tell (no /proc/self/pagemap or no PAGEMAP_SCAN: callers read /proc/self/smaps instead)."""
    if not _PAGEMAP:
        try:
            _PAGEMAP.append(os.open("/proc/self/pagemap", os.O_RDONLY))
        except OSError:
            _PAGEMAP.append(None)
    fd = _PAGEMAP[0]
    if fd is None:
        return None
    import fcntl

    region = _PageRegion()
    arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=lo, end=hi, vec=ctypes.addressof(region), vec_len=1,
                     max_pages=1, category_inverted=PAGE_IS_FILE, category_mask=PAGE_IS_FILE | PAGE_IS_PRESENT,
                     return_mask=PAGE_IS_FILE | PAGE_IS_PRESENT)
    try:
        found = fcntl.ioctl(fd, PAGEMAP_SCAN, arg)  # the number of regions written into vec
    except OSError:
        _PAGEMAP[0] = None
        return None
    return found > 0


def _copied_on_write(ranges: list[tuple[int, int]]) -> set[int]:
    """The start addresses of the mappings among ``ranges`` ((start, end) pairs) with pages copied on write: a
    plugin wrote into its features there, and ``MADV_DONTNEED`` would discard those writes. Without PAGEMAP_SCAN,
    the ``Anonymous`` kB of /proc/self/smaps decide (a mapping it does not list counts as written)."""
    found = {lo: _has_copied_pages(lo, hi) for lo, hi in ranges}
    if any(copied is None for copied in found.values()):
        anonymous = _anonymous_kb(set(found))
        return {lo for lo in found if anonymous.get(lo) != 0}
    return {lo for lo, copied in found.items() if copied}


RELEASE_EVERY = 256 * MB  # growth of the file-backed RSS between two calls of release_pages by the streaming loops
_file_rss_after_release = [0]  # bytes of file-backed RSS after the last release
_streamed = [0]  # bytes read since the last release (where the RSS cannot be read)


def file_rss() -> int | None:
    """Bytes of this process's resident file-backed (and shared) pages (``/proc/self/statm``), or None."""
    now = resident_bytes()
    return None if now is None else now[1]


def release_pages(*tensors: torch.Tensor | None) -> int:
    """Unmap this process's resident pages of the feature files behind ``tensors`` (all tracked
    feature mappings when none is given); returns the bytes advised. Linux; elsewhere a no-op.

    A memory-mapped split read whole (an epoch, a PCA pass) stays resident in the process and counts
    in its RSS until unmapped, although the kernel could drop it at any time. The loops that stream
    a large split call this after each batch, the runner between stages, so the RSS holds what one
    batch needs. The pages stay in the page cache: the next read is a minor fault, not a disk read.
    A mapping with pages copied on write (a plugin wrote into its features) is left alone, as
    ``MADV_DONTNEED`` would discard those writes."""
    if not _MAPPINGS:
        return 0
    if tensors:
        pointers = [t.untyped_storage().data_ptr() for t in tensors if t is not None]
        ranges = [(lo, hi) for lo, hi in list(_MAPPINGS.items()) if any(lo <= p < hi for p in pointers)]
    else:
        ranges = list(_MAPPINGS.items())
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    advised, written = 0, _copied_on_write(ranges)
    for lo, hi in ranges:
        if lo not in written and madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) == 0:
            advised += hi - lo
    _file_rss_after_release[0] = file_rss() or 0
    return advised


FULL_COLLECT_GROWTH = 256 * MB  # RSS growth since the last full collection that makes one worth its time
_rss_after_collect = [0]  # bytes of RSS after the last full collection (lowered when the RSS is seen lower)


def rss_grew() -> bool:
    """True when the process's RSS has grown by ``FULL_COLLECT_GROWTH`` since the last full
    collection of :func:`free_memory` (or since the lowest RSS it has seen after one; True where
    ``/proc`` is missing). A full collection takes ~0.2 s with torch and Lightning loaded, a fifth of
    a small audit's (cut point, defense) group: the runner asks for one only when this holds, so what
    reference cycles can hold back is bounded by that growth."""
    now = resident_bytes()
    return now is None or now[0] - _rss_after_collect[0] >= FULL_COLLECT_GROWTH


def free_memory(full: bool = True) -> None:
    """Give back what finished work no longer uses: collect cyclic garbage (every generation when
    ``full``, else the young ones: milliseconds), return the C heap's free pages to the system
    (glibc ``malloc_trim``) and release the tracked feature mappings (:func:`release_pages`).

    A stage's large tensors can outlive it inside reference cycles (a Lightning module and its
    trainer, a closure over the split), which Python frees only when the cyclic collector runs, and
    that is triggered by object counts, not bytes: on UTKFace a (cut point, defense) group's released
    views (880 MB at pool1) were still resident while the next cut's features were extracted."""
    gc.collect() if full else gc.collect(1)
    trim()
    release_pages()
    now = resident_bytes()
    if now is not None:
        _rss_after_collect[0] = now[0] if full else min(_rss_after_collect[0], now[0])


def streamed(*batches: torch.Tensor) -> None:
    """Called by a streaming loop after it has read (or written) ``batches``: once the process's
    file-backed RSS has grown by ``RELEASE_EVERY`` since the last release, the tracked feature
    mappings are released (:func:`release_pages`), so a loop over a mapped split holds about that
    much of it in RSS, not the whole split.

    The trigger is the RSS, not the bytes read: reading one row of a mapped file maps the whole large
    folio around it (2 MB huge pages of the page cache on this kernel), so a shuffled batch of 128
    UTKFace pool1 rows (32 MB) mapped ~300 MB. Where ``/proc`` is missing, every ``RELEASE_EVERY``
    bytes read trigger it."""
    if not _MAPPINGS:
        return
    now = file_rss()
    if now is None:
        _streamed[0] += sum(b.element_size() * b.numel() for b in batches)
        if _streamed[0] >= RELEASE_EVERY:
            _streamed[0] = 0
            release_pages()
    elif now - _file_rss_after_release[0] >= RELEASE_EVERY:
        release_pages()


def write_batches(
    fn: Callable[[int, int], torch.Tensor], n: int, path: Path, batch_size: int = 256
) -> Path:
    """Write ``fn(start, stop)`` for consecutive batches of ``n`` rows into the ``.npy`` file ``path``
    (atomically: temporary file, then rename). Peak memory is one batch."""
    with atomic_write(Path(path), fsync=True) as tmp:
        out = None
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            batch = fn(start, stop).detach().cpu()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=numpy_dtype(batch.dtype), shape=(n, *batch.shape[1:]))
                reserve_file_space(tmp)  # a full disk: OSError (ENOSPC) here, not SIGBUS at a mapped write
                mapped = tracked(out)  # the written rows leave the RSS as the loop goes (written back from the cache)
            out[start:stop] = batch.numpy()
            streamed(batch)
        if out is None:
            raise ValueError("no rows to write")
        out.flush()
        del out, mapped
    return path


def map_batches(
    fn: Callable[[int, int], torch.Tensor], n: int, scratch_dir: Path | None, max_ram_mb: float,
    batch_size: int = 512, title: str | None = None,
) -> torch.Tensor:
    """``torch.cat([fn(a, b) for each batch])`` without holding the result in RAM when it is large.

    The first batch fixes dtype and shape. When the whole result is larger than
    ``max_ram_mb`` and ``scratch_dir`` is given, it is written into an unlinked
    scratch file under ``scratch_dir`` and returned memory-mapped; otherwise in RAM.
    With ``title``, a slow loop logs its progress (:class:`SlowLoop`).
    """
    progress = SlowLoop(title, n)

    def batch(start: int, stop: int) -> torch.Tensor:
        out = fn(start, stop).detach().cpu()
        progress.done(stop)
        return out

    first = batch(0, min(n, batch_size))
    total = first.element_size() * first[0].numel() * n if first.shape[0] else 0
    if scratch_dir is None or total <= max_ram_mb * MB:
        if first.shape[0] == n:
            return first
        result = first.new_empty((n, *first.shape[1:]))  # filled in place: no list of batches plus its copy
        result[: first.shape[0]] = first
        del first  # (a batch: 512 MB for 512 rows of UTKFace conv1)
        for start in range(batch_size, n, batch_size):
            result[start : min(n, start + batch_size)] = batch(start, min(n, start + batch_size))
        return result
    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch_dir, prefix=".released.", suffix=".npy")
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=numpy_dtype(first.dtype), shape=(n, *first.shape[1:]))
        reserve_file_space(tmp)  # a full disk: OSError (ENOSPC) here, not SIGBUS at a mapped write
        result = tracked(out)
        out[: first.shape[0]] = first.numpy()
        streamed(first)
        del first
        for start in range(batch_size, n, batch_size):
            stop = min(n, start + batch_size)
            rows = batch(start, stop)
            out[start:stop] = rows.numpy()
            streamed(rows)  # the rows written leave the RSS as the loop goes
    finally:
        Path(tmp).unlink(missing_ok=True)  # the mapping stays valid; the space is freed with the tensor
    return result


def file_digest(path: Path, chunk: int = 8 * MB) -> str:
    """Hex SHA-256 of the file at ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of a feature file is recorded: ``train.npy`` -> ``train.npy.sha256``."""
    return Path(path).with_name(Path(path).name + ".sha256")


class FeatureStore:
    """Edge features per (task key, cut point, split) under ``root/<task key>/<cut>/<split>.npy``;
    each name passes through :func:`audit.core.paths.path_component` (a cut point called ``../x`` or
    ``/etc`` stays under ``root``)."""

    def __init__(self, root: Path, max_ram_mb: float):
        self.root = Path(root)
        self.max_ram_mb = max_ram_mb

    def folder(self, key: str, cut: str) -> Path:
        """The folder holding the features of (key, cut): always inside ``root``."""
        return inside(self.root, key, cut)

    def path(self, key: str, cut: str, part: str) -> Path:
        return inside(self.root, key, cut, f"{part}.npy")

    def remove(self, key: str, cut: str) -> None:
        """Delete the features of (key, cut) (when every group of the cut point is done)."""
        shutil.rmtree(self.folder(key, cut), ignore_errors=True)

    def has(self, key: str, cut: str, part: str) -> bool:
        return self.path(key, cut, part).is_file()

    def _reusable(self, path: Path) -> bool:
        """True when ``path`` exists and matches the SHA-256 recorded when it was written (a resumed run
        or ``keep_features`` reuses it). A file that does not match (edited, truncated, or written
        without a record) is never used: it is removed, with a warning, and computed again."""
        if not path.is_file():
            return False
        record = digest_path(path)
        try:
            recorded = record.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            recorded = None
        if recorded is not None and recorded == file_digest(path):
            return True
        log.warning("features %s %s; not using it, computing it again", path,
                    "have no integrity record" if recorded is None else "do not match the SHA-256 recorded when "
                    "they were written (changed since)")
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        return False

    def _write(self, fn: Callable[[int, int], torch.Tensor], n: int, path: Path, batch_size: int) -> Path:
        write_batches(fn, n, path, batch_size)
        with atomic_write(digest_path(path), fsync=True) as tmp:
            tmp.write_text(file_digest(path) + "\n", encoding="ascii")
        return path

    def extract(
        self, key: str, cut: str, part: str, edge: torch.nn.Module, x: torch.Tensor,
        device: torch.device | None = None, batch_size: int = 256,
    ) -> Path:
        """Compute ``edge(x)`` in batches (eval mode, no grad) into the file for (key, cut, part),
        unless an intact copy is already there (a resumed run reuses it)."""
        path = self.path(key, cut, part)
        if self._reusable(path):
            return path
        device = device or torch.device("cpu")
        was_training = edge.training
        edge.eval().to(device)

        @torch.no_grad()
        def batch(start: int, stop: int) -> torch.Tensor:
            return edge(x[start:stop].to(device))

        try:
            self._write(batch, x.shape[0], path, batch_size)
        finally:
            edge.train(was_training)
            if device.type != "cpu":
                edge.cpu()
        return path

    def put(self, key: str, cut: str, part: str, values: torch.Tensor) -> Path:
        """Store given features (e.g. a feature dump's rows) as the file for (key, cut, part)."""
        path = self.path(key, cut, part)
        if not self._reusable(path):
            self._write(lambda start, stop: values[start:stop], values.shape[0], path, 256)
        return path

    def load(self, key: str, cut: str, part: str) -> torch.Tensor:
        return open_array(self.path(key, cut, part), self.max_ram_mb)

    def scratch(self) -> Path:
        return self.root / "scratch"
