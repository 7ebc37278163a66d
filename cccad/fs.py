"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch


def fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _atomic(path: Path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes):
    _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str):
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def atomic_torch_save(path: Path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def torch_load(path: Path):
    """Checkpoints are loaded without executing pickled code, after checking every record's CRC
    (a torch file is a zip; torch.load itself does not check them, so a flipped byte would load)."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"checksum mismatch in {bad} (corrupt)")
    return torch.load(path, map_location="cpu", weights_only=True)
