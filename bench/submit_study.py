"""Submitting the full study (3 envs x 5 seeds x its variants) to a real local SLURM cluster: wall
time of `cccad submit` and the number of sbatch calls it makes, beside submitting the same tasks
one sbatch each (what a per-task submitter does), same run. The cluster is this
benchmark's own (slurm/local/, its own ports and state); its partition is set DOWN first so no
job starts, and everything is cancelled after."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, report


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, CCCAD_SLURM_DIR=str(tmp / "slurm"), CCCAD_SLURMCTLD_PORT="28817",
                   CCCAD_SLURMD_PORT="28818", CCCAD_SLURM_DB_PORT="28819", CCCAD_SLURMDBD_PORT="28820")
        subprocess.run(["bash", ROOT / "slurm" / "local" / "up.sh"], env=env, check=True, capture_output=True)
        env["SLURM_CONF"] = str(tmp / "slurm" / "slurm.conf")
        try:
            shim = tmp / "bin"  # counts sbatch calls, then runs the real one
            shim.mkdir()
            real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
            calls = tmp / "sbatch_calls"
            (shim / "sbatch").write_text(f'#!/bin/sh\necho x >> {calls}\nexec {real} "$@"\n')
            (shim / "sbatch").chmod(0o755)
            env["PATH"] = f"{shim}:{env['PATH']}"
            subprocess.run(["scontrol", "update", "PartitionName=local", "State=DOWN"], env=env, check=True)

            t = time.perf_counter()
            out = subprocess.run([str(ROOT / ".venv" / "bin" / "cccad"), "submit", str(ROOT / "configs" / "studies" / "full.yaml"),
                                  "--cluster", str(ROOT / "slurm" / "profiles" / "local.yaml"), "--runs", str(tmp / "runs")],
                                 env=env, check=True, capture_output=True, text=True).stdout
            ours = time.perf_counter() - t
            tasks = int(re.search(r"(\d+) to submit", out).group(1))
            our_calls = len(calls.read_text().splitlines())
            calls.unlink()

            t = time.perf_counter()
            for i in range(tasks):
                subprocess.run(["sbatch", "--parsable", "-J", f"task{i}", "-o", "/dev/null", "--wrap", "true"],
                               env=env, check=True, capture_output=True)
            per_task = time.perf_counter() - t
            base_calls = len(calls.read_text().splitlines())
            queued = len(subprocess.run(["squeue", "-h", "-r"], env=env, capture_output=True, text=True).stdout.splitlines())
            print(f"queued array tasks and jobs: {queued} (expected {2 * tasks} and the report job)")
        finally:
            subprocess.run(["scancel", "-u", "root"], env=env)
            subprocess.run(["bash", ROOT / "slurm" / "local" / "down.sh"], env=env)
    what = f"submit full study (3 envs x 5 seeds, {tasks} tasks)"
    report([Row(what, "cccad submit wall time, s", ours,
                "one sbatch per task, s", per_task, "submission returns at once"),
            Row(what, "sbatch calls", our_calls,
                "one sbatch per task", base_calls, "one per array")], "submit_study")


if __name__ == "__main__":
    main()
