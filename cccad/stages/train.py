"""Stage `train`: action prediction on learning histories: AD (full context) or CompressedAD
(stage 2), optionally starting from a pre-trained encoder, fine-tuned or frozen."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cccad.config import Config, ConfigError, pick
from cccad.data.histories import sample_windows, split_streams
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.models.ad import ADTransformer
from cccad.models.compressed_ad import CompressedAD
from cccad.stages.collect import open_collected, require_dataset
from cccad.stages.pretrain_encoder import PRETRAINED_FILE, SEED_KEYS
from cccad.trainer import FINAL_MODEL, CheckpointError, Objective, fit, load_checkpoint, load_weights

NEEDS = ("collect",)
# pretrain_encoder is wired only for variants whose train.pretrained_encoder_path is "@pretrain_encoder"
INPUT_KEYS = {"collect": ("train.dataset", "dataset"),
              "pretrain_encoder": ("train.pretrained_encoder_path", PRETRAINED_FILE)}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = True
COMPRESSION_KEYS = ("recent_len", "n_latent", "chunk_len", "max_compression_depth", "encoder_n_layer")
# config the pre-trained encoder must share with this model beyond what tensor shapes show
ENCODER_CONFIG = ("env.name", "env.size", "model.n_head", "model.chunk_len")


def decided_by(cfg: Config) -> dict:
    if cfg.model.kind == "ad":
        return pick(cfg, "seed", "env", "collect", "model", "train",
                    drop=tuple(f"model.{k}" for k in COMPRESSION_KEYS))
    sections = ("seed", "env", "collect", "model", "train") + (("pretrain",) if cfg.train.pretrained_encoder_path else ())
    return pick(cfg, *sections, drop=("model.context_len",))  # an AD-only key


def preflight(cfg: Config) -> None:
    require_dataset(cfg, cfg.train.dataset, "train.dataset")
    path = cfg.train.pretrained_encoder_path
    if path.startswith("@"):
        raise ConfigError(f"train.pretrained_encoder_path: '{path}' names a study stage; outside a study give a file")
    if path and not Path(path).is_file():
        raise ConfigError(f"train.pretrained_encoder_path: no file {path}")
    if path:  # refused here, before any work, if it does not fit
        load_pretrained_encoder(build_model(cfg), cfg, log=lambda *_: None)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / FINAL_MODEL).is_file()


def build_model(cfg: Config) -> torch.nn.Module:
    if cfg.model.kind == "compressed_ad":
        return CompressedAD(cfg.model, OBS_DIM, N_ACTIONS)
    return ADTransformer(cfg.model, OBS_DIM, N_ACTIONS)


def load_pretrained_encoder(model: CompressedAD, cfg: Config, log=print) -> None:
    """Load the seed's encoder checkpoint into `model`, refusing one that does not fit."""
    path = Path(cfg.train.pretrained_encoder_path)
    state = load_checkpoint(path, SEED_KEYS)
    for part in ("encoder", "embed_context", "embed_ln"):
        load_weights(getattr(model, part), state[f"{part}_state_dict"], path, prefix=f"{part}.")
    theirs = state["config"]
    for key in ENCODER_CONFIG:
        section, name = key.split(".")
        if theirs.get(section, {}).get(name) != getattr(getattr(cfg, section), name):
            raise CheckpointError(f"{path}: pre-trained with {key}={theirs.get(section, {}).get(name)!r}, "
                                  f"this config has {getattr(getattr(cfg, section), name)!r}")
    counts = ", ".join(f"{part} ({len(state[f'{part}_state_dict'])} tensors)"
                       for part in ("encoder", "embed_context", "embed_ln"))
    log(f"loaded pre-trained {counts} from {path}, step {state['global_step']}")
    if cfg.train.freeze_encoder:
        model.encoder.requires_grad_(False)
        log(f"encoder frozen: {sum(p.numel() for p in model.encoder.parameters()):,} parameters not trained")


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
    ds = open_collected(cfg.train.dataset, cfg)
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

    val_batch = None
    if len(val_ids):
        def val_batch(i):
            rng = np.random.default_rng([cfg.seed, 2, i])
            return sample_windows(ds, val_ids, rng, cfg.train.batch_size, window_length(cfg, rng), slice(None), scale)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if cfg.train.pretrained_encoder_path:
        load_pretrained_encoder(model, cfg, log)
    log(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(train_ids)} training streams x {steps} transitions")
    result = fit(run_dir, cfg, Objective(model, action_loss, batch, decided_by(cfg), val_batch), log=log)
    result["flops_per_token"] = model.flops_per_token()
    result["chance_loss"] = float(np.log(N_ACTIONS))
    return result
