"""Files: atomic writes (a reader sees the old file or the whole new one, never a partial one),
checked for free space first where their size is known, and run and study folder locks."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
import zipfile
from pathlib import Path

import torch


class NoSpace(OSError):
    """A write that does not fit on its filesystem; one line naming the file and the space."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def require_space(path: Path, nbytes: int) -> None:
    """Refuse, before writing `nbytes` to `path`, a filesystem with less free space (and a margin)."""
    free = shutil.disk_usage(next(p for p in [Path(path), *Path(path).parents] if p.exists())).free
    if free < nbytes + (1 << 20):
        raise NoSpace(f"{path}: needs {nbytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free on its filesystem")


def no_space(path: Path, e: BaseException) -> NoSpace | None:
    """`e` as NoSpace if it is the filesystem of `path` running full (an OSError ENOSPC, or torch's
    own wording of one), else None."""
    if isinstance(e, NoSpace):
        return e
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (
        isinstance(e, RuntimeError) and "write" in str(e) and shutil.disk_usage(Path(path).parent).free < (1 << 20))
    if not full:
        return None
    return NoSpace(f"{path}: no space left on device ({shutil.disk_usage(Path(path).parent).free / 1e6:.1f} MB free)")


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


def _atomic(path: Path, write, nbytes: int):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    require_space(path, nbytes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if full := no_space(path, e):
            raise full from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes):
    _atomic(path, lambda f: f.write(data), len(data))


def atomic_write_text(path: Path, text: str):
    atomic_write_bytes(path, text.encode())


def finite(obj):
    """`obj` with every NaN or infinite float as None: strict JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj) -> None:
    """Strict JSON (non-finite numbers written as null)."""
    atomic_write_text(path, json.dumps(finite(obj), indent=1, sort_keys=True, allow_nan=False))


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None if it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def tensor_bytes(obj) -> int:
    """The bytes of the tensors in `obj` (nested dicts, lists): about a checkpoint's size."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(path: Path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f), tensor_bytes(obj))


def torch_load(path: Path):
    """Checkpoints are loaded without executing pickled code, after checking every record's CRC
    (a torch file is a zip; torch.load itself does not check them, so a flipped byte would load)."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"checksum mismatch in {bad} (corrupt)")
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- locks

class Busy(RuntimeError):
    """A folder another process is working in; the message names it (host, PID, since when)."""


@contextlib.contextmanager
def locked(folder: Path, what: str):
    """Hold `folder`'s lock (the file .lock in it, flock'ed) while inside; the lock file names its
    holder: `what` on this host, this PID, since now. Held by another process: Busy, naming that
    holder. Yields the holder a lock file still named though its lock was gone (a process that
    died: its lock is taken over), else None; a holder that ends normally leaves it empty."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Busy(f"{folder}: in use by {holder}; wait for it or stop it") from None
    try:
        previous = os.pread(fd, 1024, 0).decode(errors="replace").strip() or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} on {socket.gethostname()}, PID {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield previous
    finally:
        os.ftruncate(fd, 0)  # (a process killed before this leaves its name: see above)
        os.close(fd)  # releases the lock


def taken_over(folder: Path, previous: str | None) -> str | None:
    """The line to say when `locked` took over a dead process's lock."""
    return f"{folder}: took over the lock of {previous}, which is no longer running" if previous else None
