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
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
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
         ("probe", "dr", f"probe-{V}-darkroom-seed0"), ("train_agent", "wm", "train-agent-assault-seed0"),
         ("collect", "wm", "collect-assault-seed0"),
         ("train_encoder_decoder", "wm", "train-encoder-decoder-assault-seed0"),
         ("train_jepa", "wm", "train-jepa-JEPA-assault-seed0"),
         ("train_jepa_decoder", "wm", "train-jepa-decoder-JEPA-assault-seed0"),
         ("train_reward_predictor", "wm", "train-reward-predictor-JEPA-assault-seed0"),
         ("train_dynamics_reward_predictor", "wm", "train-dynamics-reward-predictor-JEPA-assault-seed0")]
# what a rerun may change: timings, whether it resumed, what one process of it counted
VOLATILE = re.compile(r"(seconds|per_s|resumed_from|this_process)$")


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
            strict_json(path)
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


def strict_json(path: Path):
    """JSON as the standard has it: no NaN or Infinity (Python's json writes and reads them)."""
    def refuse(constant):
        raise AssertionError(f"{path}: {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


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

def inflate_counts(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["counts"]["transitions"] += 1000
    path.write_text(json.dumps(manifest))


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
     "train_jepa", "train-jepa-JEPA-assault-seed0", "inputs.dataset={}/dataset", "checksum mismatch (corrupt)"),
    ("dataset manifest truncated", "dr", "collect-darkroom-seed0", "dataset/manifest.json", truncate,
     "pretrain_encoder", "pretrain-encoder-darkroom-seed0", "inputs.dataset={}/dataset", "manifest is not valid JSON"),
    ("dataset manifest counting more than its arrays hold", "wm", "collect-assault-seed0", "dataset/manifest.json",
     inflate_counts, "train_jepa", "train-jepa-JEPA-assault-seed0", "inputs.dataset={}/dataset",
     "counts say transitions="),
    ("final model truncated", "dr", f"train-{V}-darkroom-seed0", "model.pt", truncate,
     "evaluate", f"evaluate-{V}-darkroom-seed0", "inputs.train_run={}", "unreadable checkpoint"),
    ("pre-trained encoder, one byte flipped", "dr", "pretrain-encoder-darkroom-seed0", "encoder-pretrained-final.pt",
     flip_byte, "train", f"train-{V}-darkroom-seed0", "inputs.pretrained_encoder_path={}/encoder-pretrained-final.pt",
     "checksum mismatch"),
    ("world-model weights truncated", "wm", "train-jepa-JEPA-assault-seed0", "weights/jepa/model.pt", truncate,
     "train_reward_predictor", "train-reward-predictor-JEPA-assault-seed0", "inputs.jepa_run={}", "unreadable checkpoint"),
    ("PPO agent truncated", "wm", "train-agent-assault-seed0", "agent/ppo_policy.pt", truncate,
     "collect", "collect-assault-seed0", "inputs.agent={}/agent", "unreadable checkpoint"),
]


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_damaged_file_is_refused_by_name_and_left_as_it_was(studies, tmp_path, case):
    _, study, source, inside, damage, stage, task, override, words = case
    copy = tmp_path / source
    shutil.copytree(studies[study] / source, copy)
    damaged = copy / inside
    damage(damaged)
    before = damaged.read_bytes()
    out = tmp_path / "out"
    proc = cccad("run", stage, "-c", studies[study] / ".tasks" / f"{task}.yaml", "--out", out, override.format(copy),
                 check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(damaged) in proc.stderr and words in proc.stderr, proc.stderr
    assert damaged.read_bytes() == before  # nothing overwritten
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
    late_profile = write_yaml(root / "late.yaml", {"defaults": {"time_min": "25 hours"}, "stages": {"collect": {}}})
    (root / "twice.yaml").write_text(f"extends: {dr}\ntrain:\n  lr: 0.1\n  steps: 10\n  lr: 0.2\n")
    (root / "section.yaml").write_text(f"extends: {dr}\ntrain:\n  lr: 0.1\nmodel:\n  n_embd: 32\ntrain:\n  steps: 5\n")
    train_cfg = studies["dr"] / ".tasks" / f"train-{V}-darkroom-seed0.yaml"
    eval_cfg = studies["dr"] / ".tasks" / f"evaluate-{V}-darkroom-seed0.yaml"
    collect_wm = studies["wm"] / ".tasks" / "collect-assault-seed0.yaml"
    decoder_cfg = studies["wm"] / ".tasks" / "train-jepa-decoder-JEPA-assault-seed0.yaml"
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
        ("a comparison of an unknown variant", ["local", dr, *runs, "study.comparisons=[AD - ADD]"],
         "command line: study.comparisons[0]: 'AD - ADD' is not 'A - B' with A and B among study.variants"),
        ("seed set by hand in a study", ["local", dr, *runs, "seed=3"], "set by the study runner"),
        ("missing study file", ["local", root / "nope.yaml", *runs], "nope.yaml"),
        ("file that is not YAML", ["local", root / "broken.yaml", *runs], "not valid YAML"),
        ("extends a missing file", ["local", orphan, *runs], "missing.yaml"),
        ("a key twice in a file", ["local", root / "twice.yaml", *runs],
         f"{root / 'twice.yaml'}: line 5: 'train.lr' appears twice (first at line 3)"),
        ("a section twice in a file", ["local", root / "section.yaml", *runs],
         f"{root / 'section.yaml'}: line 6: 'train' appears twice (first at line 2)"),
        ("a command-line value that makes a file's wrong", ["local", dr, *runs, "train.steps=3"],
         "command line: train.num_warmup_steps: must be within [0, steps=3] (set by train.steps)"),
        ("a bad value in a profile's defaults", ["submit", dr, "--cluster", late_profile, "--dry-run", *runs],
         f"{late_profile}: defaults.time_min: expected an integer, got '25 hours'"),
        ("a stage of the other env family", ["run", "train_jepa", "-c", train_cfg, *out],
         f"{train_cfg}: env.name: stage train_jepa runs for atari envs, this config's env is darkroom"),
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
         "command line: env.game: unknown ALE game 'ALE/NoSuchGame-v5'"),
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


# ----------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB filesystem of its own (tmpfs), and a function that fills it to `free` bytes left."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)

    def leave_free(free: int) -> Path:
        filler = mount / "filler"
        filler.unlink(missing_ok=True)
        size = shutil.disk_usage(mount).free - free
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)
        return filler

    yield mount, leave_free
    subprocess.run(["umount", str(mount)], check=True)


def one_line_error(proc, code: int, *words: str) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    return proc.stderr


def test_disk_full_while_collecting_training_and_reporting_is_one_line_and_leaves_no_temporary(studies, small_disk):
    mount, leave_free = small_disk
    collect_cfg = studies["dr"] / ".tasks" / "collect-darkroom-seed0.yaml"
    # a dataset larger than the disk: refused before its arrays are filled (they are memory-mapped,
    # and a memory-mapped write to a full disk is a SIGBUS, not an error)
    out = mount / "collect"
    proc = cccad("run", "collect", "-c", collect_cfg, "--out", out, "collect.streams_per_task=400", check=False)
    one_line_error(proc, 1, f"{out}/.dataset.tmp-", "needs", "MB free on its filesystem")
    assert not list(out.glob(".dataset.tmp-*")) and not (out / "dataset").exists()
    assert "MB free on its filesystem" in (out / "log.txt").read_text()  # said in the run's log too
    cccad("run", "collect", "-c", collect_cfg, "--out", out)  # a size that fits: the rerun works

    # a checkpoint that does not fit: the run stops there, its temporary removed; with room it resumes
    train_cfg = studies["dr"] / ".tasks" / f"train-{V}-darkroom-seed0.yaml"
    run = mount / "train"
    filler = leave_free(1_500_000)  # room for the run's small files, not for a checkpoint and the margin
    proc = cccad("run", "train", "-c", train_cfg, "--out", run, check=False)
    one_line_error(proc, 1, f"{run / 'checkpoints' / 'step-00000020.pt'}: needs", "MB free on its filesystem")
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")] and not (run / "metrics.json").exists()
    filler.unlink()
    cccad("run", "train", "-c", train_cfg, "--out", run)
    assert_same_outputs(studies["dr"] / f"train-{V}-darkroom-seed0", run)

    # the report: one line, nothing half-written; then written whole
    runs = mount / "runs"
    study = runs / studies["dr"].name
    shutil.copytree(studies["dr"], study, ignore=shutil.ignore_patterns("checkpoints", "tb", "report"))
    filler = leave_free(500_000)
    proc = cccad("report", studies["dr_file"], "--runs", runs, check=False)
    one_line_error(proc, 1, f"{study / 'report'}/", "MB free on its filesystem")
    assert not [p for p in (study / "report").iterdir() if p.name.startswith(".")]
    filler.unlink()
    assert "| darkroom |" in Path(cccad("report", studies["dr_file"], "--runs", runs).stdout.split("report: ")[1].strip()).read_text()


# ----------------------------------------------------------------------------- training gone wrong, Ctrl-C, two runners

def test_non_finite_training_stops_with_one_line_and_writes_no_metrics(studies, tmp_path):
    config = studies["dr"] / ".tasks" / f"train-{V}-darkroom-seed0.yaml"
    proc = cccad("run", "train", "-c", config, "--out", tmp_path / "run", "train.lr=1e9", "train.grad_clip=0",
                 check=False)
    line = one_line_error(proc, 1, "(lr ", "training stopped")
    assert re.search(r"cccad: error: non-finite (loss|gradient norm) (nan|inf|-inf) at step \d+ ", line), line
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "model.pt").exists()


def start_study(file, runs, *extra) -> subprocess.Popen:
    """`cccad local` in a process group of its own, as a terminal runs it (Ctrl-C reaches the group;
    SIGINT is not ignored, as it is for whatever a script started in the background)."""
    return subprocess.Popen([sys.executable, "-m", "cccad", "local", str(file), "--runs", str(runs), *extra],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path_glob, root: Path, timeout: float = 300):
    deadline = time.time() + timeout
    while not list(root.glob(path_glob)):
        assert time.time() < deadline, f"no {path_glob} under {root}"
        time.sleep(0.05)


AD_STUDY = {**TINY, "study": {"name": "dr", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                               "variants": {"AD": {}}}}


def test_ctrl_c_stops_the_study_at_a_checkpoint_and_a_second_runner_is_refused(studies, tmp_path):
    """Ctrl-C in `cccad local`: one line, the training task stopped at a checkpoint, exit 130; a
    second `cccad local` of the same study meanwhile is refused naming the first; the rerun resumes
    to the uninterrupted result. A runner killed outright leaves its lock to the next, which says so."""
    file = write_yaml(tmp_path / "dr.yaml", {**AD_STUDY, "train": {**TINY["train"], "steps": 400}})
    runs = tmp_path / "runs"
    first = start_study(file, runs)
    train = runs / "dr" / "train-AD-darkroom-seed0"
    wait_for("checkpoints/step-*.pt", train)
    (task,) = [p for p in psutil.Process(first.pid).children() if str(train) in p.cmdline()]
    task.suspend()  # (held at its step while the second runner tries: the run is not over before it)
    second = cccad("local", file, "--runs", runs, check=False)
    one_line_error(second, 2, f"{runs / 'dr'}: in use by cccad local on {socket.gethostname()}, PID {first.pid}, since")
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: the runner and its task (delivered to the task once it goes on)
    task.resume()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, out + err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{train.name} stopped" in err, err
    log = (train / "log.txt").read_text()
    assert "cccad: interrupted: SIGINT at step" in log and "Traceback" not in log and not (train / "metrics.json").exists()
    assert log.rstrip().splitlines()[-1].startswith("cccad: task ended: exit code 130 (cccad local")

    # killed outright (SIGKILL, no chance to clean up): the next runner takes the lock over and resumes
    killed = start_study(file, runs)
    deadline = time.time() + 120
    while f"PID {killed.pid}," not in (runs / "dr" / ".lock").read_text():  # it holds the study
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    proc = cccad("local", file, "--runs", runs)
    assert f"took over the lock of cccad local on {socket.gethostname()}, PID {killed.pid}" in proc.stdout
    log = (train / "log.txt").read_text()
    assert "resumed from" in log
    uninterrupted = cccad("local", file, "--runs", tmp_path / "straight")
    assert_same_outputs(tmp_path / "straight" / "dr" / train.name, train)
    assert "[done]" in uninterrupted.stdout


def test_a_task_killed_by_a_signal_says_so_in_its_log_and_the_report(studies, tmp_path):
    file = write_yaml(tmp_path / "dr.yaml", {**AD_STUDY, "train": {**TINY["train"], "steps": 400}})
    runs = tmp_path / "runs"
    runner = start_study(file, runs)
    train = runs / "dr" / "train-AD-darkroom-seed0"
    wait_for("tb", train)
    (child,) = [p for p in psutil.Process(runner.pid).children() if str(train) in p.cmdline()]
    child.kill()  # the task's own process, as the OOM killer would
    out, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1 and f"[FAILED]  {train.name}" in out and "killed by SIGKILL" in out, out
    assert (train / "log.txt").read_text().rstrip().splitlines()[-1].startswith("cccad: task ended: killed by SIGKILL")
    report = (runs / "dr" / "report" / "report.md").read_text()
    assert f"- `{train.name}`: incomplete: started and did not finish; see {train / 'log.txt'} (its last attempt " \
           "ended: killed by SIGKILL)" in report


def test_a_run_folder_in_use_is_refused_and_cccad_run_writes_its_own_log(studies, tmp_path):
    config = studies["dr"] / ".tasks" / f"train-{V}-darkroom-seed0.yaml"
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "cccad", "run", "train", "-c", str(config), "--out", str(run),
                              "train.steps=2000"], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("checkpoints/step-*.pt", run)  # in the loop: its stop handlers are in place
    first.send_signal(signal.SIGSTOP)  # (held at its step while the second tries: the run is not over before it)
    second = cccad("run", "train", "-c", config, "--out", run, "train.steps=2000", check=False)
    one_line_error(second, 2, f"{run}: in use by cccad run train on {socket.gethostname()}, PID {first.pid}")
    first.send_signal(signal.SIGTERM)  # a scheduler's stop (delivered once it goes on): a checkpoint, exit 75
    first.send_signal(signal.SIGCONT)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 75
    log = (run / "log.txt").read_text()  # by hand too: what it printed is in its run folder's log
    assert out.splitlines()[0] in log and "cccad: interrupted: SIGTERM at step" in log
