"""Where a process computes: the device, chosen at run time (a CUDA GPU when there is one), and
how many CPU threads it uses."""
from __future__ import annotations

import os

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def threads() -> int:
    """How many threads this process computes with: an explicit setting wins (CCCAD_THREADS, or
    OMP_NUM_THREADS); else the CPUs SLURM gave its task (SLURM_CPUS_PER_TASK); else the CPUs it may
    run on (its affinity), shared among the processes of its run on this node (LOCAL_WORLD_SIZE).
    Torch's own default, every core, makes processes that share cores much slower (two 2-thread
    training processes on 2 cores: about 12x)."""
    for var in ("CCCAD_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return max(1, len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def set_threads() -> int:
    n = threads()
    torch.set_num_threads(n)
    return n
