"""The one dataset format: a folder of .npy arrays plus manifest.json.

- Written once, atomically: arrays are filled in a hidden temporary folder (memory-mapped, so a
  dataset may be larger than memory), checksummed, the manifest written last, then the folder is
  renamed into place. A folder without a valid manifest is never a dataset.
- Read memory-mapped without pickle (`np.load(..., mmap_mode="r", allow_pickle=False)`).
- Refused, with a message naming what differs, when its config hash does not match the
  requesting config, when a file is missing or truncated, or when a checksum fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from cccad.fs import atomic_write_json, fsync_dir, no_space, require_space

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DatasetError(RuntimeError):
    """A dataset that cannot be used; the message names the folder and what is wrong."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class DatasetWriter:
    """Create arrays with `create` (memory-mapped, fill them in place) or grow them with `append`
    (when their length is known only at the end), then `commit`."""

    def __init__(self, path: str | Path, kind: str, config: dict, config_hash: str):
        self.path = Path(path)
        if (self.path / MANIFEST).exists():
            raise DatasetError(f"{self.path}: a dataset already exists here; refusing to overwrite it")
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):  # left by killed writers
            pid = stale.name.rpartition("-")[2]
            if stale == self.tmp or (pid.isdigit() and not _alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.kind, self.config, self.config_hash = kind, config, config_hash
        self.arrays: dict[str, np.memmap] = {}
        self.growing: dict[str, dict] = {}

    def create(self, name: str, shape: tuple, dtype) -> np.memmap:
        file = self.tmp / f"{name}.npy"
        require_space(file, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        arr = np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=tuple(shape))
        # reserve the blocks now: a memory-mapped write to a full filesystem is a SIGBUS, not an error
        with open(file, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, file.stat().st_size)
            except OSError as e:
                raise no_space(file, e) or e from None
        self.arrays[name] = arr
        return arr

    def add(self, name: str, values: np.ndarray):
        self.create(name, values.shape, values.dtype)[...] = values

    def append(self, name: str, values: np.ndarray):
        """Add rows to array `name` (created by its first append; later rows must match in dtype
        and row shape). Rows go to a raw file; `commit` turns it into an .npy."""
        values = np.ascontiguousarray(values)
        grow = self.growing.get(name)
        if grow is None:
            grow = self.growing[name] = {"file": open(self.tmp / f"{name}.raw", "wb"), "dtype": values.dtype,
                                         "row": values.shape[1:], "rows": 0}
        if values.dtype != grow["dtype"] or values.shape[1:] != grow["row"]:
            raise ValueError(f"{name}: appending {values.dtype} rows of {values.shape[1:]} to "
                             f"{grow['dtype']} rows of {grow['row']}")
        try:
            grow["file"].write(values.tobytes())
        except OSError as e:
            raise no_space(Path(grow["file"].name), e) or e from None
        grow["rows"] += len(values)

    def _finish_growing(self, name: str):
        grow = self.growing.pop(name)
        grow["file"].close()
        raw = self.tmp / f"{name}.raw"
        require_space(self.tmp / f"{name}.npy", raw.stat().st_size)  # (a copy of the raw file, removed after)
        with open(self.tmp / f"{name}.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(grow["dtype"]),
                                                     "fortran_order": False, "shape": (grow["rows"], *grow["row"])})
            with open(raw, "rb") as r:
                shutil.copyfileobj(r, f, 1 << 22)
        raw.unlink()

    def commit(self, counts: dict, meta: dict | None = None) -> Path:
        for name in list(self.growing):
            self._finish_growing(name)
        for arr in self.arrays.values():
            arr.flush()
        entries = {}
        for file in sorted(self.tmp.glob("*.npy")):
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
            entries[file.stem] = {"file": file.name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                                  "bytes": file.stat().st_size, "sha256": _sha256(file)}
            del arr
        del self.arrays
        manifest = {"format_version": FORMAT_VERSION, "kind": self.kind, "config_hash": self.config_hash,
                    "config": self.config, "counts": counts, "arrays": entries, "meta": meta or {},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.tmp / MANIFEST, manifest)
        if (self.path / MANIFEST).exists():  # another writer finished first: keep its dataset
            self.abort()
            raise DatasetError(f"{self.path}: a dataset appeared here while writing; kept it, dropped this copy")
        if self.path.exists():  # an earlier partial attempt without a manifest: never valid
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self):
        for grow in self.growing.values():
            grow["file"].close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Dataset:
    """A validated dataset; `arrays[name]` are read-only memory maps."""

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray]):
        self.path, self.manifest, self.arrays = path, manifest, arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def meta(self) -> dict:
        return self.manifest["meta"]


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise DatasetError(f"{path}: no dataset folder here")
    if not file.is_file():
        raise DatasetError(f"{path}: no {MANIFEST} (an unfinished or foreign folder, not a dataset)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DatasetError(f"{file}: manifest is not valid JSON (truncated or corrupt)") from None
    for key in ("format_version", "kind", "config_hash", "config", "arrays", "counts"):
        if key not in manifest:
            raise DatasetError(f"{file}: manifest lacks '{key}'")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DatasetError(f"{file}: format version {manifest['format_version']}, expected {FORMAT_VERSION}")
    return manifest


def _diff(expected: dict, found: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(expected) | set(found)):
        e, f = expected.get(k), found.get(k)
        if isinstance(e, dict) and isinstance(f, dict):
            out += _diff(e, f, f"{prefix}{k}.")
        elif e != f:
            out.append(f"{prefix}{k}={f!r} (config wants {e!r})")
    return out


def open_dataset(path: str | Path, kind: str | None = None, expect_config: dict | None = None,
                 expect_hash: str | None = None, verify: bool = True) -> Dataset:
    """Open and validate. `verify` recomputes every checksum; sizes are always checked."""
    path = Path(path)
    manifest = read_manifest(path)
    if kind and manifest["kind"] != kind:
        raise DatasetError(f"{path}: holds a '{manifest['kind']}' dataset, expected '{kind}'")
    if expect_hash and manifest["config_hash"] != expect_hash:
        diff = _diff(expect_config or {}, manifest["config"]) or ["config hash differs"]
        raise DatasetError(f"{path}: dataset does not match the config: " + "; ".join(diff[:5]))
    arrays = {}
    for name, entry in manifest["arrays"].items():
        file = path / entry["file"]
        if not file.is_file():
            raise DatasetError(f"{file}: missing array file '{name}'")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise DatasetError(f"{file}: {size} bytes, manifest says {entry['bytes']} (truncated or corrupt)")
        if verify and _sha256(file) != entry["sha256"]:
            raise DatasetError(f"{file}: checksum mismatch (corrupt)")
        try:
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"{file}: unreadable array ({e})") from None
        if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
            raise DatasetError(f"{file}: shape {list(arr.shape)} {arr.dtype}, manifest says "
                               f"{entry['shape']} {entry['dtype']}")
        arrays[name] = arr
    return Dataset(path, manifest, arrays)
