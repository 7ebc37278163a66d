"""Training as several processes (RANK/WORLD_SIZE/MASTER_ADDR in the environment, as SLURM tasks
or accelerate launch give them) under DDP, ZeRO-2 and ZeRO-3 on CPU with gloo: the same losses
as one process with the same seeds and global batch, ZeRO-3 really split, exact resume from
per-process optimizer partitions."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINY, cccad, write_yaml
from cccad.checkpoint import load_checkpoint

STEPS = ["train.steps=40", "train.checkpoint_every=20", "train.log_every=10", "train.val_every=20"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, deepspeed_ops):
    root = tmp_path_factory.mktemp("data")
    cfg = write_yaml(root / "tiny.yaml", TINY)
    cccad("run", "collect", "-c", cfg, "--out", root / "collect")
    return cfg, root / "collect" / "dataset"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(n, cfg, out, *overrides) -> list[subprocess.Popen]:
    """`cccad run train` as n processes (their output piped)."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = dict(os.environ, PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n))
        procs.append(subprocess.Popen([sys.executable, "-m", "cccad", "run", "train", "-c", str(cfg), "--out", str(out),
                                       *STEPS, *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def launch(n, cfg, out, *overrides) -> list[str]:
    """`cccad run train` as n processes, to the end; returns each process's output."""
    procs = start(n, cfg, out, *overrides)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, outputs
    return outputs


def losses(out) -> list[tuple]:
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [(row["step"], row["loss"], row.get("val_loss", 0.0)) for row in history]


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3"])
def test_two_processes_match_one(dataset, tmp_path, strategy):
    cfg, data = dataset
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "one", f"inputs.dataset={data}", *STEPS)
    outputs = launch(2, cfg, tmp_path / "two", f"inputs.dataset={data}", f"train.strategy={strategy}")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r[0] for r in one] == [r[0] for r in two]
    for a, b in zip(one, two):
        assert b[1] == pytest.approx(a[1], rel=1e-5) and b[2] == pytest.approx(a[2], rel=1e-5), (a, b)
    weights = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["model_state_dict"]
    reference = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["model_state_dict"]
    assert all(torch.allclose(weights[k], reference[k], atol=1e-5) for k in reference)
    assert not (tmp_path / "two" / "log.rank1.txt").exists() and "train: done" in outputs[0]
    assert "train: done" not in outputs[1]  # only the main process goes on past training


def test_zero3_splits_parameters_and_resumes_exactly_from_its_partitions(dataset, tmp_path):
    cfg, data = dataset
    args = (f"inputs.dataset={data}", "train.strategy=zero3")
    outputs = launch(2, cfg, tmp_path / "run", *args)
    total = sum(t.numel() for t in torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model_state_dict"].values())
    for rank, text in enumerate(outputs):
        line = next(l for l in text.splitlines() if l.startswith("ZeRO-3:"))
        held, of = (int(x.replace(",", "")) for x in line.split("holds ")[1].split(" parameter")[0].split(" of "))
        assert of == total and held <= total // 2 + 64, line  # half each, up to alignment padding
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000020.pt"
    for rank in range(2):  # each process's optimizer file holds its partition only
        shard = load_checkpoint(ckpt.with_name(f"step-00000020.rank{rank}.pt"), ("zero", "rng"))
        master = sum(t.numel() for t in shard["zero"]["fp32_flat_groups"])
        assert 0 < master <= total // 2 + 64, master
    first = losses(tmp_path / "run")
    (tmp_path / "run" / "model.pt").unlink()  # run again: resumes from step 20's checkpoint and partitions
    launch(2, cfg, tmp_path / "run", *args)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["resumed_from"] == 20
    assert losses(tmp_path / "run") == first


def test_zero_checkpoint_refuses_another_process_count(dataset, tmp_path):
    cfg, data = dataset
    launch(2, cfg, tmp_path / "run", f"inputs.dataset={data}", "train.strategy=zero2")
    proc = cccad("run", "train", "-c", cfg, "--out", tmp_path / "run", f"inputs.dataset={data}", "train.strategy=zero2",
                 *STEPS, check=False)
    assert proc.returncode == 2
    assert "written under train.strategy=zero2 by 2 processes; this run is zero2 with 1" in proc.stderr, proc.stderr


def test_a_hung_peer_ends_the_run_after_the_collective_timeout(dataset, tmp_path):
    """A process that stops answering (SIGSTOP: hung, or cut off from the others) does not hold
    the rest forever: their next collective fails after train.collective_timeout_s and the run
    ends with one line saying so, its checkpoints kept for the rerun."""
    cfg, data = dataset
    procs = start(2, cfg, tmp_path / "run", f"inputs.dataset={data}", "train.steps=100000", "train.collective_timeout_s=5")
    try:
        deadline = time.time() + 300
        while not list((tmp_path / "run" / "checkpoints").glob("step-*.pt")):
            assert time.time() < deadline and procs[0].poll() is None
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.time()
        out = procs[0].communicate(timeout=120)[0]
        waited = time.time() - stopped
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1 and 5 <= waited < 60, (procs[0].returncode, waited, out[-2000:])
    (line,) = [l for l in out.splitlines() if l.startswith("cccad: error:")]
    assert ("process 0 of 2: a collective operation failed, another process of this run is lost or hung "
            "(train.collective_timeout_s=5)") in line, line
    assert "Traceback" not in out, out[-2000:]


def test_stage_that_does_not_train_refuses_several_processes(dataset, tmp_path):
    cfg, _ = dataset
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORLD_SIZE="2", RANK="0")
    proc = subprocess.run([sys.executable, "-m", "cccad", "run", "collect", "-c", str(cfg), "--out", str(tmp_path / "c")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "stage collect runs as one process" in proc.stderr, proc.stderr
    assert not (tmp_path / "c").exists()


def test_strategy_is_how_not_what(dataset, tmp_path):
    """A run made under DDP counts as done for ZeRO-2 (same results), but its checkpoint is not
    resumed under another strategy."""
    from cccad.config import load_config
    from cccad.runinfo import run_hash

    cfg, data = dataset
    assert run_hash(load_config(cfg, ["train.strategy=ddp"]), "train") == run_hash(load_config(cfg, ["train.strategy=zero2"]), "train")
    assert run_hash(load_config(cfg), "train") != run_hash(load_config(cfg, ["train.lr=0.01"]), "train")
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "run", f"inputs.dataset={data}", *STEPS)
    (tmp_path / "run" / "model.pt").unlink()
    proc = cccad("run", "train", "-c", cfg, "--out", tmp_path / "run", f"inputs.dataset={data}",
                 "train.strategy=zero3", *STEPS, check=False)
    assert proc.returncode == 2 and "written under train.strategy=ddp by 1 processes; this run is zero3" in proc.stderr, \
        proc.stderr
