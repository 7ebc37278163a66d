"""What every run records: its manifest (code version, resolved config, packages, host, job) and
its metrics.json, stamped with the config hash that the study runner checks before skipping it."""
from __future__ import annotations

import copy
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from cccad.config import Config, config_hash
from cccad.fs import atomic_write_json, fsync_dir
from cccad.stages import STAGES

PACKAGES = ("torch", "numpy", "accelerate", "deepspeed", "submitit", "stable_baselines3", "gymnasium",
            "ale_py", "tensorboard", "PyYAML", "transformers")
METRICS = "metrics.json"
MANIFEST = "manifest.json"


# how a stage runs, not what it makes: not part of a run's identity (a study finished under DDP is
# not redone for ZeRO-2; a checkpoint records its strategy and is refused by another)
HOW_NOT_WHAT = ("train.strategy", "train.collective_timeout_s")


def run_hash(cfg: Config, stage: str) -> str:
    """The hash of what decides a stage's outputs (the stage's `decided_by`)."""
    decided = copy.deepcopy(STAGES[stage].decided_by(cfg))
    for key in HOW_NOT_WHAT:
        section, _, name = key.partition(".")
        if isinstance(decided.get(section), dict):
            decided[section].pop(name, None)
    return config_hash(decided)


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
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


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
        "image_build": image_build(),
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
    try:
        return json.loads((Path(run_dir) / METRICS).read_text())
    except (OSError, json.JSONDecodeError):
        return None
