"""Threads follow the allocation: an explicit setting, else SLURM's CPUs per task, else the CPUs
the process may run on shared among the run's processes on its node."""
import json
import os
import subprocess
import sys

import pytest

from cccad.runtime import threads
from conftest import ROOT

ALLOCATION = ("CCCAD_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for var in ALLOCATION:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("env, cpus, expected", [
    ({}, 2, 2),  # the process's CPUs
    ({"LOCAL_WORLD_SIZE": "2"}, 2, 1),  # shared by the run's two processes on this node
    ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),  # never fewer than one
    ({"SLURM_CPUS_PER_TASK": "3"}, 2, 3),  # what SLURM gave the task
    ({"SLURM_CPUS_PER_TASK": "3", "OMP_NUM_THREADS": "1"}, 2, 1),  # an explicit setting wins
    ({"OMP_NUM_THREADS": "1", "CCCAD_THREADS": "2"}, 2, 2),
])
def test_threads_follow_the_allocation(clean_env, env, cpus, expected):
    for var, value in env.items():
        clean_env.setenv(var, value)
    clean_env.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert threads() == expected


def test_a_run_records_its_threads_and_uses_its_cpus(tmp_path):
    """A real process pinned to one CPU, nothing set: it computes with one thread and says so."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATION}
    out = tmp_path / "collect"
    proc = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "cccad", "run", "collect", "-c",
                           str(ROOT / "configs" / "studies" / "smoke.yaml"), "--out", str(out), "collect.episodes=4",
                           "collect.streams_per_task=1"], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["threads"] == 1


def test_a_runs_code_is_dirty_only_when_what_it_executes_changed(tmp_path):
    """A run records its commit, dirty if its code or configs differ from it; an edited README or
    benchmark leaves it clean."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--local", str(ROOT), str(clone)], check=True, timeout=120)
    probe = [sys.executable, "-c", "import json; from cccad.runinfo import git_commit; print(json.dumps(git_commit()))"]

    def code():
        out = subprocess.run(probe, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(clone)), capture_output=True,
                             text=True, check=True, timeout=60).stdout
        return json.loads(out)

    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code() == {"commit": head, "dirty": False}
    for name in ("README.md", "bench/results.md"):
        with open(clone / name, "a") as f:
            f.write("\nedited\n")
    assert code() == {"commit": head, "dirty": False}
    with open(clone / "configs" / "studies" / "smoke.yaml", "a") as f:
        f.write("\n# edited\n")
    assert code() == {"commit": head, "dirty": True}
