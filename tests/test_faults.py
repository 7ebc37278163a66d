"""Fault injection (`pytest -m faults` runs it alone; `make test` runs it too):

- every stage of both families is SIGKILLed at random points, the files it left are checked (each
  one whole, never a half-written file), and the rerun ends with the outputs of an uninterrupted
  run (a run killed after writing metrics.json, its last file, must already hold them);
- each kind of file (dataset array, dataset manifest, checkpoint, final weights, metrics) is
  truncated or corrupted, and is refused by name, or for metrics, its run redone;
- a table of bad configs and command lines, each answered by one line naming the problem, exit
  code 2, no traceback and nothing written.

Kill points come from CCCAD_FAULT_SEED (default 0) and are printed, so a failure can be replayed.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cccad.cli import main
from conftest import CONFIGS, ROOT, TINY, cccad, write_yaml

pytestmark = pytest.mark.faults

FAULT_SEED = int(os.environ.get("CCCAD_FAULT_SEED", "0"))
KILLS = 1  # per stage, at a random point of its work
FINETUNED = yaml.safe_load((CONFIGS / "studies" / "full.yaml").read_text())["study"]["variants"]["CompressedAD-finetuned"]
DARKROOM = {**TINY, "study": {"name": "dr", "envs": ["darkroom"], "seeds": [0],
                              "variants": {"CompressedAD-finetuned": FINETUNED}}}
V = "CompressedAD-finetuned"
TASKS = [("collect", "dr", "collect-darkroom-seed0"), ("pretrain_encoder", "dr", "pretrain-encoder-darkroom-seed0"),
         ("train", "dr", f"train-{V}-darkroom-seed0"), ("evaluate", "dr", f"evaluate-{V}-darkroom-seed0"),
         ("probe", "dr", f"probe-{V}-darkroom-seed0"), ("collect", "wm", "collect-assault-seed0"),
         ("train_encoder_decoder", "wm", "train-encoder-decoder-assault-seed0"),
         ("train_jepa", "wm", "train-jepa-assault-seed0"), ("train_jepa_decoder", "wm", "train-jepa-decoder-assault-seed0"),
         ("train_reward_predictor", "wm", "train-reward-predictor-assault-seed0"),
         ("train_dynamics_reward_predictor", "wm", "train-dynamics-reward-predictor-assault-seed0")]
# what a rerun may change: timings, whether it resumed or reused, what one process of it counted
VOLATILE = re.compile(r"(seconds|per_s|resumed_from|reused|this_process)$")


@pytest.fixture(scope="module")
def studies(darkroom_study, world_study):
    """Both families' graphs, run once uninterrupted by `cccad local` (conftest): the references."""
    return {"dr": darkroom_study[1], "wm": world_study[1], "dr_file": darkroom_study[0]}


# ----------------------------------------------------------------------------- SIGKILL

def start_and_kill(args: list, run_dir: Path, delay: float) -> bool:
    """Start `cccad args...`; once it has written this run's manifest (imports done, work begun),
    wait `delay` seconds and SIGKILL it. True if it finished first."""
    started = time.time_ns()
    manifest = run_dir / "manifest.json"
    proc = subprocess.Popen([sys.executable, "-m", "cccad", *map(str, args)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and not (manifest.exists() and manifest.stat().st_mtime_ns >= started):
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return False


def check_every_file_whole(run_dir: Path) -> None:
    """What a killed run left: each file parses whole (writes are atomic: a temporary file, then a
    rename); temporary files are hidden (.name.tmp) and no reader looks at them."""
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if path.is_dir() or rel.parts[0] == "tb" or path.name.startswith("log") or path.name.startswith("."):
            continue  # TensorBoard and logs are append-only streams; hidden: unfinished temporaries
        if any(part.startswith(".") for part in rel.parts):
            continue  # inside a dataset's hidden temporary folder
        if path.suffix == ".pt":
            torch.load(path, weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".png":
            assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), path
        elif path.suffix == ".zip":
            assert zipfile.ZipFile(path).testzip() is None, path
        else:
            raise AssertionError(f"unexpected file {path}")


def strip_volatile(value):
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def assert_same_outputs(reference: Path, run_dir: Path) -> None:
    a, b = (strip_volatile(json.loads((d / "metrics.json").read_text())) for d in (reference, run_dir))
    assert a == b
    compared = 0
    for ref in reference.rglob("*"):
        rel = ref.relative_to(reference)
        if rel.parts[0] in ("checkpoints", "tb") or ref.is_dir():
            continue
        if ref.suffix == ".pt":
            x, y = torch.load(ref, weights_only=True), torch.load(run_dir / rel, weights_only=True)
            tensors = [(k, t) for k, t in flat(x)]
            assert [k for k, _ in tensors] == [k for k, _ in flat(y)], rel
            for (key, t), (_, u) in zip(tensors, flat(y)):
                assert torch.equal(t, u), (rel, key)
            compared += 1
        elif ref.suffix == ".npy":
            assert ref.read_bytes() == (run_dir / rel).read_bytes(), rel
            compared += 1
    assert compared or "evaluate" in reference.name  # evaluation's output is its metrics


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}{k}.")
    elif torch.is_tensor(obj):
        yield prefix, obj


@pytest.mark.parametrize("stage, study, task", TASKS, ids=[t[2] for t in TASKS])
def test_killed_at_random_points_then_rerun_equals_uninterrupted(studies, tmp_path, stage, study, task):
    reference = studies[study] / task
    config = studies[study] / ".tasks" / f"{task}.yaml"
    work = json.loads((reference / "metrics.json").read_text())["wall_seconds"]
    rng = random.Random(f"{FAULT_SEED}:{task}")
    run_dir, kills, shorter = tmp_path / task, [], 1.0
    while len(kills) < KILLS and shorter > 0.01:
        delay = rng.uniform(0, work) * shorter
        finished = start_and_kill(["run", stage, "-c", config, "--out", run_dir], run_dir, delay)
        check_every_file_whole(run_dir)
        if finished or (run_dir / "metrics.json").exists():  # its work was done (metrics.json is written last)
            if kills:
                break
            shutil.rmtree(run_dir)  # faster than the reference run: start over, killing sooner
            shorter /= 2
            continue
        kills.append(round(delay, 2))
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
    print(f"{task}: killed after {kills} s of work (of {work:.1f} s uninterrupted; CCCAD_FAULT_SEED={FAULT_SEED}), "
          f"checkpoints left: {checkpoints}")
    assert kills, "the stage finished before the first kill"
    if not (run_dir / "metrics.json").exists():
        cccad("run", stage, "-c", config, "--out", run_dir)
        if checkpoints:  # a training stage killed after a checkpoint resumes from the latest
            assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"] == int(checkpoints[-1][5:-3])
    assert_same_outputs(reference, run_dir)


# ----------------------------------------------------------------------------- corrupt files

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the values (past any header, before any zip directory)
    path.write_bytes(bytes(data))


# (what is damaged: study, run folder, file inside it, damage; then the stage that reads it, its
# task (for its config), an override pointing it at the damaged copy, and the refusal's words)
CORRUPTIONS = [
    ("dataset array truncated", "dr", "collect-darkroom-seed0", "dataset/states.npy", truncate,
     "train", f"train-{V}-darkroom-seed0", "inputs.dataset={}/dataset", "(truncated or corrupt)"),
    ("dataset array, one byte flipped", "wm", "collect-assault-seed0", "dataset/frames.npy", flip_byte,
     "train_jepa", "train-jepa-assault-seed0", "inputs.dataset={}/dataset", "checksum mismatch (corrupt)"),
    ("dataset manifest truncated", "dr", "collect-darkroom-seed0", "dataset/manifest.json", truncate,
     "pretrain_encoder", "pretrain-encoder-darkroom-seed0", "inputs.dataset={}/dataset", "manifest is not valid JSON"),
    ("final model truncated", "dr", f"train-{V}-darkroom-seed0", "model.pt", truncate,
     "evaluate", f"evaluate-{V}-darkroom-seed0", "inputs.train_run={}", "unreadable checkpoint"),
    ("pre-trained encoder, one byte flipped", "dr", "pretrain-encoder-darkroom-seed0", "encoder-pretrained-final.pt",
     flip_byte, "train", f"train-{V}-darkroom-seed0", "inputs.pretrained_encoder_path={}/encoder-pretrained-final.pt",
     "checksum mismatch"),
    ("world-model weights truncated", "wm", "train-jepa-assault-seed0", "weights/jepa/model.pt", truncate,
     "train_reward_predictor", "train-reward-predictor-assault-seed0", "inputs.jepa_run={}", "unreadable checkpoint"),
    ("PPO agent truncated", "wm", "collect-assault-seed0", "agent/ppo_policy.pt", truncate,
     "collect", "collect-assault-seed0", None, "unreadable checkpoint"),
]


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_damaged_file_is_refused_by_name_and_left_as_it_was(studies, tmp_path, case):
    _, study, source, inside, damage, stage, task, override, words = case
    copy = tmp_path / source
    shutil.copytree(studies[study] / source, copy)
    damaged = copy / inside
    damage(damaged)
    before = damaged.read_bytes()
    if override is None:  # the stage's own run folder (the agent is reused): rerun it in place
        (copy / "metrics.json").unlink()
        (copy / "dataset" / "manifest.json").unlink()
        out, args = copy, []
    else:
        out, args = tmp_path / "out", [override.format(copy)]
    proc = cccad("run", stage, "-c", studies[study] / ".tasks" / f"{task}.yaml", "--out", out, *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(damaged) in proc.stderr and words in proc.stderr, proc.stderr
    assert damaged.read_bytes() == before  # nothing overwritten
    assert not (out / "metrics.json").exists()
    if override is not None:
        assert not out.exists()  # refused before any work: nothing written


def test_damaged_metrics_mean_the_run_is_redone_and_reported(studies, tmp_path):
    """In the reference study itself (a run's identity holds its inputs' paths, so a copy would be
    another study); the redone evaluation is the same, so it stays a reference."""
    runs, study_file = studies["dr"].parent, studies["dr_file"]
    evaluate = studies["dr"] / f"evaluate-{V}-darkroom-seed0"
    before = tmp_path / evaluate.name
    shutil.copytree(evaluate, before)
    truncate(evaluate / "metrics.json")
    report = cccad("report", study_file, "--runs", runs).stdout.split("report: ")[1].strip()
    assert (f"- `evaluate-{V}-darkroom-seed0`: incomplete: {evaluate / 'metrics.json'}: not valid JSON "
            "(truncated or corrupt); the run is redone") in Path(report).read_text()
    proc = cccad("local", study_file, "--runs", runs)
    assert (f"[run]     evaluate-{V}-darkroom-seed0 ({evaluate / 'metrics.json'}: not valid JSON "
            "(truncated or corrupt); the run is redone)") in proc.stdout
    assert proc.stdout.count("[run]") == 1
    assert_same_outputs(before, evaluate)


# ----------------------------------------------------------------------------- bad input

def bad_inputs(root: Path, studies: dict) -> list[tuple[str, list, str]]:
    """(case, command line, words the one-line error must hold)."""
    dr = write_yaml(root / "dr.yaml", DARKROOM)
    typo = write_yaml(root / "typo.yaml", {**DARKROOM, "train": {**DARKROOM["train"], "lrr": 0.1}})
    (root / "broken.yaml").write_text("train: [1, 2\n")
    orphan = write_yaml(root / "orphan.yaml", {"extends": str(root / "missing.yaml")})
    bad_variant = write_yaml(root / "variant.yaml", {**DARKROOM, "study": {**DARKROOM["study"],
                                                                           "variants": {"AD": {"model.kindd": "ad"}}}})
    profile = write_yaml(root / "profile.yaml", {"defaults": {"gpu_per_task": 1}})
    train_cfg = studies["dr"] / ".tasks" / f"train-{V}-darkroom-seed0.yaml"
    eval_cfg = studies["dr"] / ".tasks" / f"evaluate-{V}-darkroom-seed0.yaml"
    collect_wm = studies["wm"] / ".tasks" / "collect-assault-seed0.yaml"
    decoder_cfg = studies["wm"] / ".tasks" / "train-jepa-decoder-assault-seed0.yaml"
    runs = ["--runs", root / "runs"]
    out = ["--out", root / "runs" / "out"]
    return [
        ("unknown key in a file", ["local", typo, *runs], f"{typo}: unknown key 'train.lrr'"),
        ("unknown key on the command line", ["local", dr, *runs, "train.lrr=0.1"], "command line: unknown key 'train.lrr'"),
        ("wrong type", ["local", dr, *runs, "train.steps=many"], "train.steps"),
        ("impossible size: no latents", ["local", dr, *runs, "model.n_latent=0"], "model.n_latent"),
        ("impossible size: heads", ["local", dr, *runs, "model.n_head=3"], "model.n_embd: must be divisible by n_head (3)"),
        ("chunk longer than the recent window", ["local", dr, *runs, "model.chunk_len=40"], "model.chunk_len"),
        ("curriculum beyond max depth", ["local", dr, *runs, "model.max_compression_depth=2"],
         "uses depth 3, beyond model.max_compression_depth=2"),
        ("negative learning rate", ["local", dr, *runs, "train.lr=-1"], "train.lr"),
        ("unknown env", ["local", dr, *runs, "study.envs=[nowhere]"], "unknown env 'nowhere'"),
        ("unknown stage in a study", ["local", dr, *runs, "study.stages=[collect,trian]"], "trian"),
        ("stage without the stage it needs", ["local", dr, *runs, "study.stages=[train]"], "'train' needs 'collect'"),
        ("unknown key in a variant", ["local", bad_variant, *runs], "model.kindd"),
        ("seed set by hand in a study", ["local", dr, *runs, "seed=3"], "set by the study runner"),
        ("missing study file", ["local", root / "nope.yaml", *runs], "nope.yaml"),
        ("file that is not YAML", ["local", root / "broken.yaml", *runs], "not valid YAML"),
        ("extends a missing file", ["local", orphan, *runs], "missing.yaml"),
        ("unknown cluster profile", ["submit", dr, "--cluster", root / "nope-profile.yaml", "--dry-run", *runs],
         "nope-profile.yaml"),
        ("bad key in a cluster profile", ["submit", dr, "--cluster", profile, "--dry-run", *runs],
         "defaults.gpu_per_task"),
        ("unknown stage", ["run", "trian", "-c", train_cfg, *out], "invalid choice: 'trian'"),
        ("override without a value", ["local", dr, *runs, "train.steps"], "unrecognized arguments: train.steps"),
        ("unknown training strategy", ["run", "train", "-c", train_cfg, *out, "train.strategy=zero9"], "train.strategy"),
        ("missing dataset", ["run", "train", "-c", train_cfg, *out, f"inputs.dataset={root / 'nodata'}"],
         f"inputs.dataset: no dataset at {root / 'nodata'}"),
        ("dataset of another config", ["run", "train", "-c", train_cfg, *out, "env.size=7"],
         "dataset does not match the config: env.size=9 (config wants 7)"),
        ("missing checkpoint", ["run", "evaluate", "-c", eval_cfg, *out, f"inputs.train_run={root / 'nomodel'}"],
         f"inputs.train_run: no model.pt in {root / 'nomodel'}"),
        ("checkpoint of another model", ["run", "evaluate", "-c", eval_cfg, *out, "model.n_embd=64"],
         "trained with model.n_embd=32, this config has 64"),
        ("unknown Atari game", ["run", "collect", "-c", collect_wm, *out, "env.game=ALE/NoSuchGame-v5"],
         "env.game: unknown ALE game 'ALE/NoSuchGame-v5'"),
        ("frame size the encoder cannot halve", ["run", "train_jepa", "-c", collect_wm, *out, "env.frame_size=60"],
         "env.frame_size: must be divisible by 2^4"),
        ("probe without its JEPA run", ["run", "train_jepa_decoder", "-c", decoder_cfg, *out,
                                        f"inputs.jepa_run={root / 'nojepa'}"], "inputs.jepa_run: no weights/jepa/model.pt"),
        ("world-model weights of another size", ["run", "train_jepa_decoder", "-c", decoder_cfg, *out,
                                                 "world_model.latent_dim=48"], "trained with world_model.latent_dim=32"),
    ]


def test_bad_configs_and_command_lines_get_one_line_and_nothing_written(studies, tmp_path, capsys):
    """Through the command line's own entry point (`cccad` is cccad.cli:main), in this process: an
    exception escaping it would be a traceback."""
    cases = bad_inputs(tmp_path, studies)
    failures = []
    for case, args, words in cases:
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own exit
            code = e.code
        except Exception as e:  # noqa: BLE001  (a traceback: collected as a failure)
            code = f"traceback ({type(e).__name__}: {e})"
        out, err = capsys.readouterr()
        if not (code == 2 and err.count("\n") == 1 and words in err and not out and not (tmp_path / "runs").exists()):
            failures.append(f"{case}: exit {code}, stdout {out!r}, stderr {err!r}")
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    print(f"bad input: {len(cases)} cases tried, {len(cases) - len(failures)} passed")
    assert len(cases) >= 20 and not failures, "\n".join(failures)
