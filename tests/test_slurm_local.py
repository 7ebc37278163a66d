"""The local SLURM cluster (slurm/local/): real daemons with real accounting, started and stopped
by its scripts. Ports and state folder are the test's own, apart from a developer's cluster."""
import subprocess
import time
from pathlib import Path

import pytest

from conftest import start_cluster, stop_cluster

pytestmark = pytest.mark.slurm
PID_FILES = {"slurmctld": "slurmctld.pid", "slurmd": "slurmd.pid", "slurmdbd": "slurmdbd.pid",
             "mariadbd": "mariadb.pid", "munged": "munge/munged.pid"}


def daemons(state) -> dict[str, int]:
    """The cluster's daemons alive now, by the PID their start recorded (and their command name)."""
    alive = {}
    for name, file in PID_FILES.items():
        pid = int((state / file).read_text()) if (state / file).is_file() else None
        comm = Path(f"/proc/{pid}/comm")
        if pid and comm.is_file() and comm.read_text().strip() == name:
            alive[name] = pid
    return alive


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = start_cluster(state, 26817)
    yield state, env
    stop_cluster(env)


def run(env, *args) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=60).stdout


def test_jobs_run_and_sacct_reports_their_states(cluster, tmp_path):
    state, env = cluster
    ok = run(env, "sbatch", "--parsable", "-o", f"{tmp_path}/%j.out", "--wrap", "echo hello from $SLURM_JOB_ID").strip()
    bad = run(env, "sbatch", "--parsable", "-o", f"{tmp_path}/%j.out", "--wrap", "exit 3").strip()
    deadline = time.time() + 60
    states = {}
    while time.time() < deadline:
        rows = run(env, "sacct", "-n", "-X", "-P", "-j", f"{ok},{bad}", "--format=JobID,State,ExitCode").split()
        states = {r.split("|")[0]: r.split("|")[1:] for r in rows}
        if states.get(ok, [""])[0] == "COMPLETED" and states.get(bad, [""])[0] == "FAILED":
            break
        time.sleep(0.5)
    assert states[ok] == ["COMPLETED", "0:0"] and states[bad] == ["FAILED", "3:0"], states
    assert (tmp_path / f"{ok}.out").read_text().strip() == f"hello from {ok}"


def test_down_stops_every_daemon(cluster):
    state, env = cluster
    pids = daemons(state)
    assert set(pids) == set(PID_FILES), pids
    stop_cluster(env)
    assert daemons(state) == {} and not any(Path(f"/proc/{pid}").exists() for pid in pids.values())
