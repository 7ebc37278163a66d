"""Stage `train`: action prediction on learning histories (AD)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cccad.config import Config, ConfigError
from cccad.data.histories import history_windows
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.models.ad import ADTransformer
from cccad.stages.collect import open_histories
from cccad.trainer import FINAL_MODEL, Objective, fit

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("train.dataset", "dataset")}
PER_VARIANT = True


def preflight(cfg: Config) -> None:
    if not cfg.train.dataset:
        raise ConfigError("train.dataset: not set (a collect run folder's dataset)")
    if not (Path(cfg.train.dataset) / "manifest.json").is_file():
        raise ConfigError(f"train.dataset: no dataset at {cfg.train.dataset}")


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / FINAL_MODEL).is_file()


def build_model(cfg: Config) -> torch.nn.Module:
    return ADTransformer(cfg.model, OBS_DIM, N_ACTIONS)


def action_loss(model, batch):
    logits = model(batch["features"])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["actions"].flatten())
    accuracy = (logits.argmax(-1) == batch["actions"]).float().mean()
    return loss, {"accuracy": accuracy.detach()}


def split_streams(n_streams: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([seed, 1]).permutation(n_streams)
    n_val = int(round(val_fraction * n_streams))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    ds = open_histories(cfg.train.dataset, cfg)
    n_streams, steps = ds["actions"].shape
    K = cfg.model.context_len
    if steps < K:
        raise ConfigError(f"model.context_len: {K} exceeds the {steps} transitions of each history")
    train_ids, val_ids = split_streams(n_streams, cfg.train.val_fraction, cfg.seed)
    if not len(train_ids):
        raise ConfigError(f"train.val_fraction: {cfg.train.val_fraction} leaves none of {n_streams} streams to train on")
    scale = cfg.env.size - 1

    def sample(ids, rng, size, part=slice(None)):
        streams, starts = ids[rng.integers(0, len(ids), size)], rng.integers(0, steps - K + 1, size)
        return history_windows(ds, streams[part], starts[part], K, N_ACTIONS, scale)

    val_batch = None
    if len(val_ids):
        val_batch = lambda i: sample(val_ids, np.random.default_rng([cfg.seed, 2, i]), cfg.train.batch_size)  # noqa: E731
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    log(f"AD transformer: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(train_ids)} training streams x {steps} transitions")
    result = fit(run_dir, cfg, Objective(model, action_loss, lambda *a: sample(train_ids, *a), val_batch), log=log)
    result["flops_per_token"] = model.flops_per_token()
    result["chance_loss"] = float(np.log(N_ACTIONS))
    return result
