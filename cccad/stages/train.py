"""Stage `train`: action prediction on learning histories: AD (full context) or CompressedAD
(stage 2), optionally starting from a pre-trained encoder, fine-tuned or frozen."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cccad.checkpoint import FINAL_MODEL
from cccad.config import Config, ConfigError
from cccad.data.collected import open_collected, require_dataset
from cccad.data.histories import sample_windows, split_streams
from cccad.envs.darkroom import N_ACTIONS
from cccad.models.policies import PRETRAINED_FILE, build_model, load_pretrained_encoder, trained_by
from cccad.sections import Column, Section
from cccad.trainer import Objective, fit

NEEDS = ("collect",)
# pretrain_encoder is wired only for variants whose inputs.pretrained_encoder_path is "@pretrain_encoder"
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset"),
              "pretrain_encoder": ("inputs.pretrained_encoder_path", PRETRAINED_FILE)}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = True


REPORT = (Section(
    "Action prediction (train)", "Cross-entropy of the next action on validation streams, against the uniform "
    "guess (chance loss).",
    (Column("validation loss", lambda m: m.get("final_val_loss"), 4), Column("chance loss", lambda m: m.get("chance_loss"), 4),
     Column("samples/s", lambda m: m.get("samples_per_s"), 0))),)


def summary(m: dict) -> str:
    val = m.get("final_val_loss")
    return (f"validation loss {val:.4f}" if val is not None else f"training loss {m['final_loss']:.4f}") + \
        f" (chance {m['chance_loss']:.4f})"


def decided_by(cfg: Config) -> dict:
    return trained_by(cfg)


def preflight(cfg: Config) -> None:
    require_dataset(cfg)
    path = cfg.inputs.pretrained_encoder_path
    if path.startswith("@"):
        raise ConfigError(f"inputs.pretrained_encoder_path: '{path}' names a study stage; outside a study give a file")
    if path and not Path(path).is_file():
        raise ConfigError(f"inputs.pretrained_encoder_path: no file {path}")
    if path:  # refused here, before any work, if it does not fit
        load_pretrained_encoder(build_model(cfg), cfg, log=lambda *_: None)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / FINAL_MODEL).is_file()


def action_loss(model, batch):
    logits = model(batch["features"])
    actions = batch["actions"][:, -logits.shape[1]:]  # CompressedAD predicts the recent part only
    loss = F.cross_entropy(logits.flatten(0, 1).float(), actions.flatten())
    accuracy = (logits.argmax(-1) == actions).float().mean()
    return loss, {"accuracy": accuracy.detach()}


def window_length(cfg: Config, rng: np.random.Generator) -> int:
    """AD: context_len transitions. CompressedAD: d chunks (d uniform in 0..max depth, so every
    depth the evaluation meets is trained) then recent_len transitions."""
    m = cfg.model
    if m.kind == "ad":
        return m.context_len
    return int(rng.integers(0, m.max_compression_depth + 1)) * m.chunk_len + m.recent_len


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    ds = open_collected(cfg.inputs.dataset, cfg)
    n_streams, steps = ds["actions"].shape
    m = cfg.model
    longest = m.context_len if m.kind == "ad" else m.max_compression_depth * m.chunk_len + m.recent_len
    if steps < longest:
        key = "model.context_len" if m.kind == "ad" else "model.recent_len"
        raise ConfigError(f"{key}: windows of {longest} transitions exceed the {steps} of each history")
    train_ids, val_ids = split_streams(n_streams, cfg.train.val_fraction, cfg.seed)
    if not len(train_ids):
        raise ConfigError(f"train.val_fraction: {cfg.train.val_fraction} leaves none of {n_streams} streams to train on")
    scale = cfg.env.size - 1

    def batch(rng, size, part, step):
        return sample_windows(ds, train_ids, rng, size, window_length(cfg, rng), part, scale)

    def val_batch(rng, size, i):
        return sample_windows(ds, val_ids, rng, size, window_length(cfg, rng), slice(None), scale)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.inputs.pretrained_encoder_path:
        load_pretrained_encoder(model, cfg, log)
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(train_ids)} training streams x {steps} transitions")
    result = fit(run_dir, cfg, Objective(model, action_loss, batch, decided_by(cfg),
                                         val_batch if len(val_ids) else None), log=log)
    result["flops_per_token"] = model.flops_per_token()
    result["chance_loss"] = float(np.log(N_ACTIONS))
    return result
