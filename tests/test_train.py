import math

import pytest
import torch

from cccad.checkpoint import CKPT_DIR, FINAL_MODEL
from conftest import cccad, kill_after_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest import TINY, write_yaml
    root = tmp_path_factory.mktemp("data")
    cfg = write_yaml(root / "tiny.yaml", TINY)
    cccad("run", "collect", "-c", cfg, "--out", root / "collect", "collect.episodes=60", "collect.streams_per_task=4")
    return cfg, root / "collect" / "dataset"


def weights(run_dir):
    return torch.load(run_dir / FINAL_MODEL, weights_only=True)["model_state_dict"]


def test_loss_falls_below_chance(tmp_path, dataset):
    cfg, data = dataset
    out = tmp_path / "train"
    cccad("run", "train", "-c", cfg, "--out", out, f"inputs.dataset={data}", "collect.episodes=60",
          "collect.streams_per_task=4", "train.steps=300", "train.batch_size=16", "train.lr=0.001")
    import json
    m = json.loads((out / "metrics.json").read_text())
    first, last = m["history"][0]["loss"], m["final_loss"]
    assert abs(first - math.log(5)) < 0.1 and last < math.log(5) - 0.3, (first, last)
    assert m["final_val_loss"] < math.log(5)
    assert (out / "tb").is_dir() and (out / "manifest.json").is_file()


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, dataset):
    cfg, data = dataset
    args = [f"inputs.dataset={data}", "collect.episodes=60", "collect.streams_per_task=4", "train.steps=120",
            "train.checkpoint_every=10", "model.dropout=0.1"]  # dropout: RNG state must resume too
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "straight", *args)

    killed = tmp_path / "killed"
    kill_after_checkpoint(["run", "train", "-c", cfg, "--out", killed, *args], killed, 20, FINAL_MODEL)
    resumed = cccad("run", "train", "-c", cfg, "--out", killed, *args)
    assert "resumed from" in resumed.stdout
    a, b = weights(tmp_path / "straight"), weights(killed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def short_run_without_its_end(tmp_path, dataset):
    """A 20-step run whose final model is removed, as if it had died after its step-10 checkpoint."""
    cfg, data = dataset
    args = [f"inputs.dataset={data}", "collect.episodes=60", "collect.streams_per_task=4", "train.steps=20",
            "train.checkpoint_every=10"]
    out = tmp_path / "run"
    cccad("run", "train", "-c", cfg, "--out", out, *args)
    (out / FINAL_MODEL).unlink()
    return cfg, out, args


def test_resume_refuses_checkpoint_of_another_config(tmp_path, dataset):
    cfg, out, args = short_run_without_its_end(tmp_path, dataset)
    proc = cccad("run", "train", "-c", cfg, "--out", out, *args, "train.lr=0.1", check=False)
    assert proc.returncode == 2 and "different config" in proc.stderr and "step-00000010.pt" in proc.stderr


def test_damaged_latest_checkpoint_is_set_aside_and_the_one_before_resumes(tmp_path, dataset):
    cfg, data = dataset
    args = [f"inputs.dataset={data}", "collect.episodes=60", "collect.streams_per_task=4", "train.steps=30",
            "train.checkpoint_every=10"]
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "straight", *args)
    out = tmp_path / "run"
    cccad("run", "train", "-c", cfg, "--out", out, *args)
    for name in (FINAL_MODEL, "metrics.json"):  # as if it had died after its step-20 checkpoint
        (out / name).unlink()
    latest = out / CKPT_DIR / "step-00000020.pt"
    damaged = latest.read_bytes()[:1000]
    latest.write_bytes(damaged)
    proc = cccad("run", "train", "-c", cfg, "--out", out, *args)
    assert f"skipped damaged checkpoint {latest} (" in proc.stdout and "unreadable checkpoint" in proc.stdout
    assert f"resumed from {out / CKPT_DIR / 'step-00000010.pt'} at step 10" in proc.stdout
    assert latest.with_name("step-00000020.pt.damaged").read_bytes() == damaged  # kept, not deleted
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every checkpoint damaged: set aside, and the run starts over
    (out / FINAL_MODEL).unlink()
    for ckpt in (out / CKPT_DIR).glob("step-*.pt"):
        ckpt.write_bytes(b"not a checkpoint")
    proc = cccad("run", "train", "-c", cfg, "--out", out, *args)
    assert proc.stdout.count("skipped damaged checkpoint") == 2 and "resumed from" not in proc.stdout
    again = weights(out)
    assert all(torch.equal(a[k], again[k]) for k in a)


def test_evaluate_refuses_a_model_of_another_config(tmp_path, dataset):
    cfg, data = dataset
    args = [f"inputs.dataset={data}", "collect.episodes=60", "collect.streams_per_task=4", "train.steps=5"]
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "train", *args)
    evaluate = ["run", "evaluate", "-c", cfg, "--out", tmp_path / "eval", f"inputs.train_run={tmp_path / 'train'}", *args]
    proc = cccad(*evaluate, "model.n_embd=64", check=False)
    assert proc.returncode == 2 and "model.n_embd=32, this config has 64" in proc.stderr
    # another split would make training goals "held out": refused too
    proc = cccad(*evaluate, "env.split_seed=1", check=False)
    assert proc.returncode == 2 and "env.split_seed=0, this config has 1" in proc.stderr
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_checkpoint_tensors_are_checked_by_name_and_shape(tmp_path, dataset):
    from cccad.config import load_config
    from cccad.models.policies import load_trained
    from cccad.checkpoint import CheckpointError
    cfg, data = dataset
    args = [f"inputs.dataset={data}", "collect.episodes=60", "collect.streams_per_task=4", "train.steps=5"]
    cccad("run", "train", "-c", cfg, "--out", tmp_path / "train", *args)
    state = torch.load(tmp_path / "train" / FINAL_MODEL, weights_only=True)
    state["model_state_dict"]["head.weight"] = torch.zeros(7, 32)
    torch.save(state, tmp_path / "train" / FINAL_MODEL)
    with pytest.raises(CheckpointError, match=r"tensor 'head.weight' has shape \(7, 32\), this model needs \(5, 32\)"):
        load_trained(load_config(cfg, args), tmp_path / "train", "cpu")


def test_validation_averages_each_stat_over_the_batches_that_have_it(tmp_path):
    """A stat only some batches give (the reconstruction loss of windows that compress anything)."""
    import numpy as np

    from cccad.config import load_config
    from cccad.trainer import Objective, fit
    cfg = load_config(None, ["train.steps=4", "train.batch_size=2", "train.num_warmup_steps=0", "train.log_every=2",
                             "train.val_every=2", "train.val_batches=4", "train.checkpoint_every=100"])
    model = torch.nn.Linear(1, 1)

    def batch(rng, size, part, step):
        return {"x": torch.full((size, 1), float(rng.integers(1, 7)))}

    def loss(m, b):
        out = m(b["x"]).pow(2).mean()
        return out, ({"x": b["x"][0, 0]} if int(b["x"][0, 0]) != 1 else {})

    result = fit(tmp_path, cfg, Objective(model, loss, batch, {"t": 1}, val_batch=lambda rng, size, i: batch(rng, size, slice(None), i)),
                 log=lambda *_: None)
    row = result["history"][-1]
    drawn = [int(np.random.default_rng([0, 2, i]).integers(1, 7)) for i in range(4)]  # the loop's validation RNGs
    having = [v for v in drawn if v != 1]
    assert len(set(having)) > 1 and len(having) < len(drawn), drawn  # (the case: some batches lack the stat)
    assert row["val_x"] == pytest.approx(np.mean(having)) and np.isfinite(row["val_loss"])
