import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# A small but real config: every stage, seconds on a CPU.
TINY = {
    "extends": str(CONFIGS / "studies" / "smoke.yaml"),
    "collect": {"streams_per_task": 2, "episodes": 30},
    "model": {"context_len": 40, "recent_len": 18, "n_latent": 6, "chunk_len": 12, "n_embd": 32, "n_layer": 2,
              "n_head": 2, "encoder_n_layer": 1},
    "pretrain": {"pretrain_steps": 150, "pretrain_batch_size": 16, "pretrain_warmup_steps": 10, "pretrain_lr": 0.002,
                 "curriculum": [{"steps": 50, "depths": [1]}, {"steps": 50, "depths": [1, 2]},
                                {"steps": 50, "depths": [1, 2, 3]}]},
    "train": {"steps": 60, "batch_size": 8, "num_warmup_steps": 5, "log_every": 10, "checkpoint_every": 20,
              "val_every": 30, "val_batches": 1, "collective_timeout_s": 120},
    "evaluate": {"episodes": 4, "streams_per_task": 1},
    "probe": {"steps": 40, "val_samples": 64},
}

# the smoke world-model study, smaller still: seconds per stage
WORLD_SMALL = {
    "extends": str(CONFIGS / "studies" / "worldmodel_smoke.yaml"),
    # the anti-collapse terms at VICReg's own weights (variance as strong as the prediction, 25x the
    # study's): in 120 steps they must lift latents that start nearly collapsed
    "study": {"name": "wm", "variants": {"JEPA": {}, "JEPA-VICReg": {"world_model.vicreg_variance_weight": 25.0,
                                                                     "world_model.vicreg_covariance_weight": 1.0}},
              "comparisons": ["JEPA-VICReg - JEPA"]},
    "atari": {"episodes": 5, "max_episode_steps": 120, "n_envs": 2, "val_fraction": 0.4},
    "world_model": {"latent_dim": 32, "channels": [8, 16, 16, 32], "predictor_hidden": 64, "reward_hidden": 32},
    "train": {"steps": 120, "batch_size": 16, "lr": 0.001, "num_warmup_steps": 10, "checkpoint_every": 40,
              "log_every": 10, "val_every": 40},
    "probe": {"steps": 100, "batch_size": 16, "val_samples": 128},
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """`make test` runs two streams side by side (`pytest -n 2 --dist loadgroup`): the tests on
    SLURM clusters and in the container image (they start clusters of their own, on fixed ports,
    build the image once, and wait on them a lot) and all the others (which share the study runs
    below: run once per stream)."""
    for item in items:
        apart = item.get_closest_marker("slurm") or item.get_closest_marker("container")
        item.add_marker(pytest.mark.xdist_group("slurm" if apart else "local"))


@pytest.fixture(scope="session")
def deepspeed_ops(tmp_path_factory):
    """DeepSpeed compiles its CPU communication op on first use (about 40 s, then cached): once,
    here, under a lock shared by the test workers, rather than in two processes at once."""
    with FileLock(tmp_path_factory.getbasetemp().parent / "deepspeed-ops.lock"):
        subprocess.run([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"],
                       check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def darkroom_study(tmp_path_factory):
    """The TINY Darkroom graph (every stage, the four variants, seed 0), run once by `cccad local`:
    (study file, study folder, process)."""
    root = tmp_path_factory.mktemp("cad")
    file = write_yaml(root / "cad.yaml", {**TINY, "study": {"name": "cad", "envs": ["darkroom"], "seeds": [0]}})
    proc = cccad("local", file, "--runs", root / "runs")
    return file, root / "runs" / "cad", proc


@pytest.fixture(scope="session")
def world_study(tmp_path_factory):
    """The whole WORLD_SMALL graph, run once by `cccad local`: (study file, study folder, process)."""
    root = tmp_path_factory.mktemp("wm")
    file = write_yaml(root / "wm.yaml", WORLD_SMALL)
    proc = cccad("local", file, "--runs", root / "runs")
    return file, root / "runs" / "wm", proc


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return write_yaml(tmp_path / "tiny.yaml", TINY)


def cccad(*args, cwd=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "cccad", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"cccad {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_after_checkpoint(args, run_dir: Path, step: int, final_file: str) -> None:
    """Start `cccad args...` and SIGKILL it once it has checkpointed step `step` (or later)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "cccad", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and max([int(p.stem[5:]) for p in (run_dir / "checkpoints").glob("step-*.pt")],
                                          default=0) < step:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / final_file).exists(), "run finished before it could be killed"


def start_cluster(state: Path, port_base: int, nodes: int = 1) -> dict:
    """Start a local SLURM cluster (slurm/local/up.sh) of `nodes` nodes with its state in `state`
    and ports port_base..port_base+3, apart from any other; returns the environment that talks to it."""
    env = dict(os.environ, CCCAD_SLURM_DIR=str(state), CCCAD_SLURMCTLD_PORT=str(port_base),
               CCCAD_SLURMD_PORT=str(port_base + 1), CCCAD_SLURM_DB_PORT=str(port_base + 2),
               CCCAD_SLURMDBD_PORT=str(port_base + 3), NODES=str(nodes))
    up = subprocess.run(["bash", ROOT / "slurm" / "local" / "up.sh"], env=env, capture_output=True, text=True, timeout=300)
    if up.returncode != 0:  # leave no daemon of a half-started cluster behind
        subprocess.run(["bash", ROOT / "slurm" / "local" / "down.sh"], env=env, timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={state}/slurm.conf"
    return dict(env, SLURM_CONF=f"{state}/slurm.conf")


def stop_cluster(env: dict) -> None:
    subprocess.run(["bash", ROOT / "slurm" / "local" / "down.sh"], env=env, check=True, timeout=60)
