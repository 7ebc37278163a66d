"""What every run records: its manifest (code version, resolved config, packages, host, job,
threads), its log.txt (with how each attempt ended), and its metrics.json, stamped with the config
hash that the study runner checks before skipping it."""
from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from cccad.config import Config, config_hash
from cccad.fs import atomic_write_json, fsync_dir, read_json
from cccad.stages import STAGES

PACKAGES = ("torch", "numpy", "accelerate", "deepspeed", "submitit", "stable_baselines3", "gymnasium",
            "ale_py", "tensorboard", "PyYAML", "transformers")
METRICS = "metrics.json"
MANIFEST = "manifest.json"
LOG = "log.txt"


def run_folder(stage: str, env: str, seed: int, variant: str | None = None) -> str:
    """A run's folder name: `{stage}-{env}-seed{seed}`, per-variant stages `{stage}-{variant}-{env}-seed{seed}`."""
    middle = f"{variant}-" if variant else ""
    return f"{stage.replace('_', '-')}-{middle}{env}-seed{seed}"


def run_hash(cfg: Config, stage: str) -> str:
    """The hash of what decides a stage's outputs (the stage's `decided_by`)."""
    return config_hash(STAGES[stage].decided_by(cfg))


# what a run executes (as the image copies it, Makefile IMAGE_INPUTS): a change elsewhere (README,
# bench/, results/) leaves its code clean
RUN_INPUTS = ("cccad", "configs", "jobs", "slurm", "pyproject.toml", "requirements.txt")


def git_commit() -> dict:
    build = image_build()
    if build is not None:  # an image's code (no .git in it): the commit its build recorded
        return {"commit": build.get("git_commit", "unknown"), "dirty": {"true": True, "false": False}.get(build.get("git_dirty"))}
    root = Path(__file__).resolve().parent.parent
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *RUN_INPUTS))}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


IMAGE_BUILD = Path(__file__).resolve().parent.parent / "IMAGE_BUILD.json"  # written by the container recipes


def image_build() -> dict | None:
    """The container image's own build metadata when running inside one (else None)."""
    try:
        return json.loads(IMAGE_BUILD.read_text())
    except (OSError, ValueError):
        return None


def write_manifest(run_dir: Path, cfg: Config, stage: str) -> None:
    atomic_write_json(run_dir / MANIFEST, {
        "stage": stage, "code": git_commit(), "config": cfg.to_dict(), "config_hash": run_hash(cfg, stage),
        "packages": package_versions(), "python": sys.version.split()[0], "host": socket.gethostname(),
        "platform": platform.platform(), "container_image": os.environ.get("CCCAD_IMAGE"),
        "image_build": image_build(), "threads": torch.get_num_threads(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def write_metrics(run_dir: Path, cfg: Config, stage: str, metrics: dict) -> None:
    atomic_write_json(run_dir / METRICS, {"stage": stage, "config_hash": run_hash(cfg, stage), **metrics})


def remove_metrics(run_dir: Path) -> None:
    (Path(run_dir) / METRICS).unlink(missing_ok=True)
    fsync_dir(Path(run_dir))


def unreadable_metrics(run_dir: Path) -> str | None:
    """Why a run's metrics.json, which exists, cannot be read (its run is then not complete)."""
    path = Path(run_dir) / METRICS
    if path.is_file() and read_metrics(run_dir) is None:
        return f"{path}: not valid JSON (truncated or corrupt); the run is redone"
    return None


def read_metrics(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / METRICS)


class RunLog:
    """What `cccad run` says: printed, and appended to the run folder's log.txt unless its output
    already goes there (under `cccad local` and on SLURM the runner sends all of it there); only
    the main process of a run writes to the log."""

    def __init__(self, run_dir: Path, main: bool):
        path = Path(run_dir) / LOG
        self.file = open(path, "a") if main and not _is_stdout(path) else None

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self.write_only(line)

    def write_only(self, line: str) -> None:
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def _is_stdout(path: Path) -> bool:
    try:
        out, file = os.fstat(sys.stdout.fileno()), path.stat()
    except (OSError, ValueError):
        return False
    return (out.st_dev, out.st_ino) == (file.st_dev, file.st_ino)


ENDED = "cccad: task ended: "  # how a runner records the end of each attempt in the task's log


def describe_exit(returncode: int) -> str:
    """A process's return code in words: "exit code 1", "killed by SIGKILL"."""
    return f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"


def record_end(run_dir: Path, returncode: int, runner: str) -> str:
    """Append to the task's log.txt how its process ended (exit code, or the signal that killed
    it), as the runner saw it; returns that description."""
    how = describe_exit(returncode)
    with open(Path(run_dir) / LOG, "a") as f:
        f.write(f"{ENDED}{how} ({runner}, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
    return how


def last_end(run_dir: Path) -> str | None:
    """How the task's last recorded attempt ended ("exit code 1", "killed by SIGKILL"), or None."""
    try:
        text = (Path(run_dir) / LOG).read_text(errors="replace")
    except OSError:
        return None
    ends = re.findall(rf"^{re.escape(ENDED)}(.*?) \(", text, re.M)
    return ends[-1] if ends else None
