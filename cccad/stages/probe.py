"""Stage `probe`: does compression keep what the task needs? Small heads read the goal position
from a trained model's frozen representations of a window of d chunks: CompressedAD's latents of
depth d, against the same transitions uncompressed (the model's own token embeddings). AD models
get the uncompressed probe only. Heads regress the goal's coordinates (so they can name goals no
training stream had); scored on held-out streams: accuracy (both coordinates right after
rounding) and mean distance in cells, beside the constant guess of the mean training goal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import Config, ConfigError, pick
from cccad.data.collected import open_collected, require_dataset
from cccad.data.histories import sample_windows, split_streams, window_align
from cccad.envs.darkroom import DarkroomTasks
from cccad.models.compressed_ad import CompressedAD
from cccad.models.policies import load_trained, require_trained, trained_by
from cccad.plots import line_plot
from cccad.runtime import device
from cccad.sections import Bars, Column, Section
from cccad.trainer import Objective, fit

NEEDS = ("collect", "train")
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset"), "train": ("inputs.train_run", ".")}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = True
PLOT = "probe_accuracy.png"


def deepest(m: dict) -> dict:
    """A probe run's scores at its deepest window: {kind: {"accuracy", "cell_error"}}."""
    return m["per_depth"][max(m["per_depth"], key=int)]


def by_depth(m: dict) -> dict[tuple[str], dict]:
    """A probe run's scores per depth, as report rows: {(depth,): {kind: scores, "chance", "deepest"}}."""
    deepest_depth = max(m["per_depth"], key=int)
    return {(f"{d} ({int(d) * m['chunk_len']} transitions)",): {**scores, "chance": m["chance"], "deepest": d == deepest_depth}
            for d, scores in sorted(m["per_depth"].items(), key=lambda kv: int(kv[0]))}


REPORT = (Section(
    "Goal-position probe", "Share of held-out streams whose goal cell a head trained on the frozen representation "
    "(attention pooling, then an MLP) gets exactly right, per depth (chunks of history behind the latents; "
    "uncompressed: the same transitions as tokens), against guessing the mean goal.",
    (Column("accuracy, latent", lambda v: v.get("latent", {}).get("accuracy")),
     Column("accuracy, uncompressed", lambda v: v["uncompressed"]["accuracy"]),
     Column("mean-goal guess", lambda v: v["chance"]["accuracy"])), labels=("env", "depth"), views=by_depth,
    plots=(Bars("goal_probe", "goal-position probe, deepest window", "accuracy",
                values=lambda v: {kind: v[kind]["accuracy"] for kind in ("latent", "uncompressed") if kind in v}
                if v["deepest"] else {}, floor=lambda v: v["chance"]["accuracy"], floor_label="mean-goal guess"),)),)


# what a study's comparisons between variants compare (cccad/report.py)
COMPARED = (Column("goal probe accuracy, latents", lambda m: deepest(m).get("latent", {}).get("accuracy")),)


def summary(m: dict) -> str:
    return ("goal probe accuracy at the deepest window: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in deepest(m).items())
            + f" (mean-goal guess {m['chance']['accuracy']:.3f})")


def decided_by(cfg: Config) -> dict:
    windows = {"chunk_len": cfg.model.chunk_len, "depths": cfg.model.max_compression_depth}  # AD's too
    return {**trained_by(cfg), **pick(cfg, "probe"), "probe_windows": windows}


def preflight(cfg: Config) -> None:
    require_dataset(cfg)
    require_trained(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / PLOT).is_file()


class PoolingHead(nn.Module):
    """Attention pooling by one learned query, then an MLP to the goal's coordinates."""

    def __init__(self, n_embd: int, n_out: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_embd) * 0.02)
        self.key = nn.Linear(n_embd, n_embd)
        self.mlp = nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, 2 * n_embd), nn.GELU(),
                                 nn.Linear(2 * n_embd, n_out))

    def forward(self, tokens):
        weights = torch.softmax(self.key(tokens) @ self.query / tokens.shape[-1] ** 0.5, dim=1)
        return self.mlp((weights.unsqueeze(-1) * tokens).sum(1))


def views(model, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frozen representations of a window of whole chunks."""
    with torch.no_grad():
        out = {"uncompressed": model.embed(features)}
        if isinstance(model, CompressedAD):
            out["latent"] = model.latents(features)
    return out


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    dev = device()
    frozen = load_trained(cfg, cfg.inputs.train_run, dev).requires_grad_(False)
    ds = open_collected(cfg.inputs.dataset, cfg)
    m, size = cfg.model, cfg.env.size
    depths = list(range(1, m.max_compression_depth + 1))
    c = m.chunk_len
    n_streams, steps = ds["actions"].shape
    if depths[-1] * c > steps:
        raise ConfigError(f"model.chunk_len: {depths[-1]} chunks of {c} exceed the {steps} transitions of each history")
    scale = size - 1
    goals = torch.from_numpy(DarkroomTasks(cfg.env).tasks[np.asarray(ds["task_ids"])][:, -2:]).float()
    train_ids, val_ids = split_streams(n_streams, cfg.probe.val_fraction, cfg.seed)
    kinds = ["latent", "uncompressed"] if isinstance(frozen, CompressedAD) else ["uncompressed"]
    torch.manual_seed(cfg.seed)  # the heads' initial weights
    heads = nn.ModuleDict({f"{k}_d{d}": PoolingHead(m.n_embd, 2) for k in kinds for d in depths})

    def windows(ids, rng, n, depth, part=slice(None)):
        b = sample_windows(ds, ids, rng, n, depth * c, part, scale, window_align(cfg))
        return {"features": b["features"], "goal": goals[b["streams"]] / scale}

    def score(pred, goal) -> dict:
        cells = (pred * scale).round().clamp(0, scale) - goal * scale
        return {"accuracy": float((cells == 0).all(-1).float().mean()), "cell_error": float(cells.abs().sum(-1).mean())}

    def batch(rng, n, part, step):
        return {f"d{d}": windows(train_ids, rng, n, d, part) for d in depths}

    def loss(heads, batch):
        total, stats = 0.0, {}
        for d in depths:
            b = batch[f"d{d}"]
            for kind, tokens in views(frozen, b["features"]).items():
                err = F.mse_loss(heads[f"{kind}_d{d}"](tokens).float(), b["goal"])
                total = total + err
                stats[f"mse_{kind}_d{d}"] = err.detach()
        return total, stats

    log(f"goal probes on frozen {type(frozen).__name__}: {', '.join(heads)}; "
        f"{len(train_ids)} streams to train, {len(val_ids)} to score")
    result = fit(run_dir, cfg.for_probe(), Objective(heads, loss, batch, decided_by(cfg), tag="probe", frozen=frozen), log=log)

    # score on held-out streams, beside the constant guess of the mean training goal
    heads = heads.to(dev).eval()
    guess = goals[train_ids].mean(0) / scale
    per_depth, val_goals = {}, []
    rng = np.random.default_rng([cfg.seed, 3])
    with torch.no_grad():
        for d in depths:
            b = windows(val_ids, rng, cfg.probe.val_samples, d)
            val_goals.append(b["goal"])
            per_depth[str(d)] = {kind: score(heads[f"{kind}_d{d}"](tokens).float().cpu(), b["goal"])
                                 for kind, tokens in views(frozen, b["features"].to(dev)).items()}
    val_goals = torch.cat(val_goals)
    chance = score(guess.expand_as(val_goals), val_goals)
    names = {"latent": "latents (compressed)", "uncompressed": "token embeddings (uncompressed)"}
    line_plot(Path(run_dir) / PLOT, {
        **{names[k]: [per_depth[str(d)][k]["accuracy"] for d in depths] for k in kinds},
        "mean-goal guess": [chance["accuracy"]] * len(depths)},
        f"goal-position probe ({type(frozen).__name__}, {cfg.env.name})", "chunks in the window (depth)",
        "accuracy on held-out streams")
    log("goal probe on held-out streams (accuracy, mean cell error): " + "; ".join(
        f"depth {d}: " + ", ".join(f"{k} {v['accuracy']:.3f}, {v['cell_error']:.2f}" for k, v in s.items())
        for d, s in per_depth.items()) + f"; mean-goal guess {chance['accuracy']:.3f}, {chance['cell_error']:.2f}")
    return {"model": m.kind, "probe_steps": cfg.probe.steps, "final_loss": result["final_loss"],
            "per_depth": per_depth, "chance": chance, "chunk_len": c, "history": result["history"]}
