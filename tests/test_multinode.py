"""Several SLURM nodes on one machine (slurm/local/up.sh with NODES=2): each slurmd in its own
network namespace and hostname, on a private bridge. `train` across both nodes gives the losses
of one process; a node lost mid-run (slurm/local/node.sh) ends with the job requeued and resumed
on the node left, to the uninterrupted result; stopping removes every daemon, namespace, link and bridge."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, cccad, start_cluster, stop_cluster, write_yaml
from test_submit import scontrol_jobs, status, submit, wait_idle

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


# long enough (300 steps, a checkpoint every 50) for a node to be lost between two checkpoints
SECTIONS = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                      "variants": {"AD": {}}},
            "train": {**TINY["train"], "strategy": "zero2", "steps": 300, "checkpoint_every": 50, "log_every": 10,
                      "val_every": 100}}
TASK = "train-AD-darkroom-seed0"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The study's train task run by one process, not on SLURM: the losses every layout must give."""
    root = tmp_path_factory.mktemp("one")
    study_file = write_yaml(root / "study.yaml", {**TINY, **SECTIONS})
    cccad("local", study_file, "--runs", root / "runs", "train.strategy=ddp")
    return study_file, json.loads((root / "runs" / "tiny" / TASK / "metrics.json").read_text())["history"]


def train_job(runs: Path) -> str:
    record = json.loads(next((runs / "tiny" / ".submit").glob("*.json")).read_text())
    return next(a["tasks"][TASK] for a in record["arrays"] if a["name"] == "train-AD")


def assert_same_losses(history, reference):
    assert [r["step"] for r in history] == [r["step"] for r in reference]
    for a, b in zip(reference, history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)


@pytest.mark.parametrize("nodes, per_node", [(2, 1), (1, 2)], ids=["2 nodes x 1 task", "1 node x 2 tasks"])
def test_zero2_train_on_two_nodes_or_one_matches_one_process(cluster, one_process, tmp_path, deepspeed_ops,
                                                             nodes, per_node):
    """`train` as one SLURM job of 2 processes under ZeRO-2 over gloo, across the two nodes'
    namespaces or on one node, gives the losses of one process with the same global batch."""
    state, env = cluster
    study_file, reference = one_process
    profile = write_yaml(tmp_path / "profile.yaml", {"extends": str(TWO_NODES),
                                                     "stages": {"train": {"nodes": nodes, "processes": per_node}}})
    runs = tmp_path / "runs"
    submit(env, study_file, runs, profile=profile)
    wait_idle(env)
    (shown,) = scontrol_jobs(env, train_job(runs))
    assert (shown["JobState"], shown["NumNodes"], shown["NumTasks"]) == ("COMPLETED", str(nodes), "2"), shown
    if nodes == 2:
        assert shown["NodeList"] == "node[1-2]", shown
    assert_same_losses(json.loads((runs / "tiny" / TASK / "metrics.json").read_text())["history"], reference)


def node_state(env, node) -> str:
    out = run(env, "scontrol", "-o", "show", "node", node)
    return next(kv.split("=", 1)[1] for kv in out.split() if kv.startswith("State="))


def wait_for(what, check, timeout=300, every=0.2) -> float:
    """Poll `check()` until true; returns the time it became true."""
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return time.time()


def test_node_lost_mid_run_is_requeued_and_resumes_on_the_node_left(cluster, one_process, tmp_path, deepspeed_ops):
    """A ZeRO-2 `train` job on both nodes (1-2 nodes, 2 processes: local_2nodes.yaml) loses
    node2's link after its first checkpoint: SLURM marks the node down and requeues the job,
    which starts again at once with both processes on node1, resumes from its latest checkpoint
    and ends with the losses of one uninterrupted process. node2, rebooted (its processes killed,
    its slurmd started again), is back in service."""
    state, env = cluster
    study_file, reference = one_process
    runs = tmp_path / "runs"
    run_dir = runs / "tiny" / TASK
    node = [str(ROOT / "slurm" / "local" / "node.sh")]
    submit(env, study_file, runs, profile=TWO_NODES)
    wait_for("a checkpoint", lambda: any((run_dir / "checkpoints").glob("step-*.pt")), every=0.05)
    job = train_job(runs)
    assert scontrol_jobs(env, job)[0]["NodeList"] == "node[1-2]"
    cut = time.time()
    run(env, *node, "cut", "2")
    try:
        down = wait_for("node2 down", lambda: "DOWN" in node_state(env, "node2"), every=0.5)
        requeued = wait_for("the requeue", lambda: int(scontrol_jobs(env, job)[0]["Restarts"]) >= 1, every=0.5)
        resumed = wait_for("the resumed run", lambda: "resumed from" in (run_dir / "log.txt").read_text(), every=0.2)
        wait_for("the job's end", lambda: scontrol_jobs(env, job)[0]["JobState"] in ENDED, every=0.5)
        assert "DOWN" in node_state(env, "node2")  # it ran on without node2
    finally:
        run(env, *node, "reboot", "2")
    wait_for("node2 back", lambda: node_state(env, "node2").startswith("IDLE"), timeout=60)
    wait_idle(env)
    (shown,) = scontrol_jobs(env, job)
    assert (shown["JobState"], shown["NodeList"], shown["NumTasks"], shown["Restarts"]) == (
        "COMPLETED", "node1", "2", "1"), shown
    assert status(env, study_file, runs)[TASK]["requeues"] == "1"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["resumed_from"] < 300 and metrics["resumed_from"] % 50 == 0, metrics["resumed_from"]
    assert_same_losses(metrics["history"], reference)
    print(f"node lost: node2 DOWN {down - cut:.1f} s after its link was cut, job requeued after {requeued - cut:.1f} s, "
          f"training resumed on node1 from step {metrics['resumed_from']} {resumed - requeued:.1f} s after the requeue")


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
