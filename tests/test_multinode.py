"""Several SLURM nodes on one machine (slurm/local/up.sh with NODES=2): each slurmd in its own
network namespace and hostname, on a private bridge; stopping removes every daemon, namespace,
link and bridge the start made."""
import json
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TINY, cccad, start_cluster, stop_cluster, write_yaml
from test_submit import scontrol_jobs, submit, wait_idle

pytestmark = [pytest.mark.slurm, pytest.mark.multinode]
PORT = 29817
TWO_NODES = ROOT / "slurm" / "profiles" / "local_2nodes.yaml"


def run(env, *args) -> str:
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm2")
    env = start_cluster(state, PORT, nodes=2)
    yield state, env
    stop_cluster(env)


def test_two_nodes_each_with_its_own_name_and_address(cluster):
    state, env = cluster
    assert sorted(run(env, "sinfo", "-h", "-N", "-o", "%N %T").split("\n")[:2]) == ["node1 idle", "node2 idle"]
    out = run(env, "srun", "-N2", "--ntasks-per-node=1", "sh", "-c",
              "echo $(hostname) $(ip -4 -o addr show eth0 | awk '{print $4}')")
    net = f"10.{20 + PORT // 256 % 200}.{PORT % 256}"
    assert sorted(out.split("\n")[:2]) == [f"node1 {net}.11/24", f"node2 {net}.12/24"], out


def test_zero2_train_across_two_nodes_matches_one_process(cluster, tmp_path):
    """`train` as one SLURM job on 2 nodes x 1 task (ZeRO-2 over gloo between the namespaces) gives
    the losses of one process with the same global batch."""
    state, env = cluster
    sections = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                          "variants": {"AD": {}}}, "train": {**TINY["train"], "strategy": "zero2"}}
    study_file = write_yaml(tmp_path / "study.yaml", {**TINY, **sections})
    cccad("local", study_file, "--runs", tmp_path / "one", "train.strategy=ddp")  # one process
    submit(env, study_file, tmp_path / "runs", profile=TWO_NODES)
    wait_idle(env)
    record = json.loads(next((tmp_path / "runs" / "tiny" / ".submit").glob("*.json")).read_text())
    job = next(a["tasks"]["train-AD-darkroom-seed0"] for a in record["arrays"] if a["name"] == "train-AD")
    (shown,) = scontrol_jobs(env, job)
    assert (shown["JobState"], shown["NodeList"], shown["NumNodes"]) == ("COMPLETED", "node[1-2]", "2"), shown
    run_dir = tmp_path / "runs" / "tiny" / "train-AD-darkroom-seed0"
    two = json.loads((run_dir / "metrics.json").read_text())["history"]
    one = json.loads((tmp_path / "one" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())["history"]
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)


def test_stop_removes_every_daemon_namespace_and_link(cluster):
    state, env = cluster
    made = [line.split() for line in (state / "net.list").read_text().splitlines()]
    assert sorted(kind for kind, _ in made) == ["link", "link", "link", "netns", "netns"]
    pids = {f.name: int(f.read_text()) for f in state.glob("slurm*.pid")}
    assert {"slurmd.node1.pid", "slurmd.node2.pid", "slurmctld.pid"} <= set(pids)
    stop_cluster(env)
    netns, links = run(env, "ip", "netns", "list"), run(env, "ip", "-o", "link")
    for kind, name in made:
        assert name not in (netns if kind == "netns" else links), (kind, name)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values())
    assert not (state / "net.list").exists()
