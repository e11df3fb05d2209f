"""UTKFace (cropped faces): gender primary; race and age bucket private.

File names are ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` (Zhang et al., CVPR 2017).
Malformed names, links that point outside the folder, entries that are not
regular files (folders, pipes, devices), files that are not images, truncated
images and images larger than ``max_pixels`` (decompression bombs: the size is
read from the header before anything is decoded) are skipped with a warning
naming the file and the reason (once per folder and file in a process: the
preflight check and the audit load the same folder); labels are never guessed.
Decoded images are cached (uint8) under the cache folder, keyed by the file
list, sizes, modification times and the image size. In the task key the folder
stands for its images' names and contents, not its path (:meth:`UTKFace.key_params`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from audit.core.data import register_dataset
from audit.core.data.base import Dataset, LoadedData
from audit.core.errors import AuditInputError
from audit.core.file_keys import contents_digest
from audit.core.registry import PluginParams
from audit.core.store import atomic_write

log = logging.getLogger("splitaudit")

RACES = ["white", "black", "asian", "indian", "others"]
GENDERS = ["male", "female"]
_NAME = re.compile(r"^([0-9]{1,3})_([0-9])_([0-9])_([0-9]{17})\.jpg\.chip\.jpg$")  # ASCII digits only
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

UTKLabel = Literal["gender", "race", "age_bucket"]

_WARNED: set[tuple[str, str]] = set()  # (folder, message) already warned about in this process
# (resolved folder, its mtime, max_samples, subset_seed) -> digest of the images it yields. The task key is
# asked for once per cell and result, so the folder is read once per process (again when an image is added,
# removed or renamed; an image edited in place counts from the next process on)
_FOLDER_KEYS: dict[tuple[str, int, int | None, int], str | None] = {}


def _warn_skipped(root: Path, message: str) -> None:
    """Warn ``message`` about a file of ``root`` unless this process already did. (Python's own
    once-per-location rule is reset whenever a warning filter changes, as each training does.)"""
    key = (str(root.resolve()), message)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def parse_name(name: str) -> tuple[int, int, int] | str:
    """(age, gender, race) from a UTKFace file name, or a string saying what is wrong."""
    m = _NAME.match(name)
    if not m:
        return "name does not match AGE_GENDER_RACE_DATETIME.jpg.chip.jpg"
    age, gender, race = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 0 <= age <= 116:
        return f"age {age} outside 0-116"
    if gender not in (0, 1):
        return f"gender {gender} not 0 or 1"
    if not 0 <= race <= 4:
        return f"race {race} not in 0-4"
    return age, gender, race


def age_bucket_names(bins: list[int]) -> list[str]:
    edges = [0, *bins]
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges[:-1], edges[1:])]
    return names + [f"{bins[-1]}+"]


def _decode(path: Path, size: int, max_pixels: int) -> torch.Tensor | str:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return f"image of {width}x{height} pixels is larger than max_pixels={max_pixels} (decompression bomb?)"
                img = img.convert("RGB").resize((size, size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except Exception as err:  # noqa: BLE001 - any decoding problem skips the file
        return f"unreadable image ({type(err).__name__}: {err})"
    return data.reshape(size, size, 3).permute(2, 0, 1).contiguous()


@register_dataset("utkface")
class UTKFace(Dataset):
    """A folder of UTKFace images; labels gender, race (5), age_bucket."""

    class Params(PluginParams):
        root: Path = Field(description="folder of AGE_GENDER_RACE_DATETIME.jpg.chip.jpg files")
        image_size: int = Field(64, ge=8, le=512)
        primary: UTKLabel = "gender"
        private: list[UTKLabel] = Field(default_factory=lambda: ["race"])
        age_bins: list[int] = Field(default_factory=lambda: [20, 40, 60], description="upper-exclusive bucket edges")
        max_samples: int | None = Field(None, ge=10, description="keep a seeded random subset of this size")
        subset_seed: int = 0
        workers: int = Field(2, ge=1, description="decoding threads")
        max_pixels: int = Field(
            4096 * 4096, ge=1, description="skip images with more pixels than this (read from the header)"
        )

    @classmethod
    def input_numel(cls, params: "UTKFace.Params") -> int:
        return 3 * params.image_size ** 2

    @classmethod
    def key_params(cls, params: dict) -> dict:
        """The parameters as they enter the task key: ``root`` replaced by the SHA-256 of the names and
        contents of the images loading reads (:func:`audit.core.file_keys.contents_digest`). The same
        images in another folder or checkout give the same task model, committed cells and seeds; an
        added, removed, renamed or edited image gives a new key. A folder that cannot be read keeps its
        path (loading says why)."""
        out = super().key_params(params)
        dataset = cls(cls.Params.model_validate({k: v for k, v in params.items() if k != "name"}))
        root = dataset.params.root.expanduser()
        try:
            memo = (str(root.resolve()), root.stat().st_mtime_ns, dataset.params.max_samples,
                    dataset.params.subset_seed)
        except OSError:
            return out
        if memo not in _FOLDER_KEYS:
            try:
                _FOLDER_KEYS[memo] = contents_digest(path for path, _ in dataset._files())
            except AuditInputError:
                _FOLDER_KEYS[memo] = None
        if _FOLDER_KEYS[memo] is not None:
            out["root"] = {"images_sha256": _FOLDER_KEYS[memo]}
        return out

    def _files(self) -> list[tuple[Path, tuple[int, int, int]]]:
        root = self.params.root.expanduser()
        if not root.is_dir():
            raise AuditInputError(
                f"UTKFace folder {str(self.params.root)!r} does not exist (resolved: {root.resolve()}); "
                "set dataset.root=PATH"
            )
        root_real = root.resolve()
        files = []
        for path in sorted(root.iterdir()):
            if not path.name.lower().endswith(_IMAGE_SUFFIXES):
                continue
            try:
                path.resolve().relative_to(root_real)
            except ValueError:
                _warn_skipped(root, f"UTKFace: skipping {path.name}: it links outside {root}")
                continue
            if not path.is_file():  # a folder, pipe, socket or device named like an image; or a dangling link
                _warn_skipped(root, f"UTKFace: skipping {path.name}: not a regular file")
                continue
            parsed = parse_name(path.name)
            if isinstance(parsed, str):
                _warn_skipped(root, f"UTKFace: skipping malformed file name {path.name}: {parsed}")
                continue
            files.append((path, parsed))
        if not files:
            raise AuditInputError(f"no UTKFace images (AGE_GENDER_RACE_DATETIME.jpg.chip.jpg) in {root}")
        if self.params.max_samples is not None and self.params.max_samples < len(files):
            gen = torch.Generator().manual_seed(self.params.subset_seed)
            keep = torch.randperm(len(files), generator=gen)[: self.params.max_samples].sort().values
            files = [files[i] for i in keep.tolist()]
        return files

    def load(self, cache_dir: Path) -> LoadedData:
        p = self.params
        files = self._files()
        identity = [p.image_size, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f, _ in files]]
        if p.max_pixels != self.Params.model_fields["max_pixels"].default:
            identity.append(p.max_pixels)  # (the default keeps the keys of caches made before this field)
        key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
        cache = Path(cache_dir) / "datasets" / f"utkface-{key}.pt"
        if cache.exists():
            try:
                stored = torch.load(cache, weights_only=True)
                images, keep = stored["images"], stored["keep"]
            except Exception as err:  # noqa: BLE001 - never unpickle a foreign file unsafely
                raise AuditInputError(
                    f"cached UTKFace images {cache} cannot be loaded safely ({type(err).__name__}); delete the file"
                ) from None
        else:
            log.info("UTKFace: decoding %d images at %dx%d from %s", len(files), p.image_size, p.image_size, p.root)
            with ThreadPoolExecutor(p.workers) as pool:
                decoded = list(pool.map(lambda f: _decode(f[0], p.image_size, p.max_pixels), files))
            keep = []
            for i, (result, (path, _)) in enumerate(zip(decoded, files)):
                if isinstance(result, str):
                    _warn_skipped(p.root.expanduser(), f"UTKFace: skipping {path.name}: {result}")
                else:
                    keep.append(i)
            if not keep:
                raise AuditInputError(f"none of the {len(files)} UTKFace images in {p.root} could be read")
            images = torch.stack([decoded[i] for i in keep])
            keep = torch.tensor(keep)
            with atomic_write(cache) as tmp:  # two audits sharing the cache may decode at once
                torch.save({"images": images, "keep": keep}, tmp)
        meta = [files[i][1] for i in keep.tolist()]
        age = torch.tensor([m[0] for m in meta])
        labels = {
            "gender": torch.tensor([m[1] for m in meta]),
            "race": torch.tensor([m[2] for m in meta]),
            "age_bucket": torch.bucketize(age, torch.tensor(p.age_bins), right=True),
        }
        classes = {"gender": GENDERS, "race": RACES, "age_bucket": age_bucket_names(p.age_bins)}
        return LoadedData(
            x=images.float() / 255.0, labels=labels, classes=classes,
            primary=p.primary, private=list(p.private),
            meta={"kind": "image", "root": str(p.root), "n_files": len(files)},
        )
