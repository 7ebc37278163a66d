"""The Darkroom policies (AD, CompressedAD): built from a config, and loaded from the runs that
trained them, refused (naming the file and the key or tensor) when they do not fit the config."""
from __future__ import annotations

from pathlib import Path

import torch

from cccad.checkpoint import FINAL_MODEL, load_matching, load_weights
from cccad.config import Config, ConfigError, pick
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.models.ad import ADTransformer
from cccad.models.compressed_ad import CompressedAD

COMPRESSION_KEYS = ("recent_len", "n_latent", "chunk_len", "max_compression_depth", "encoder_n_layer", "encoder")
# the pre-trained encoder file: exactly the keys of the CompressedAD encoder pre-training guide
PRETRAINED_FILE = "encoder-pretrained-final.pt"
PRETRAINED_KEYS = ("encoder_state_dict", "embed_context_state_dict", "embed_ln_state_dict", "global_step", "config")
PRETRAINED_PARTS = ("encoder", "embed_context", "embed_ln")
# config the pre-trained encoder must share with this model beyond what tensor shapes show
ENCODER_CONFIG = ("env.name", "env.size", "model.n_head", "model.chunk_len", "model.encoder")


def build_model(cfg: Config) -> torch.nn.Module:
    if cfg.model.kind == "compressed_ad":
        return CompressedAD(cfg.model, OBS_DIM, N_ACTIONS)
    return ADTransformer(cfg.model, OBS_DIM, N_ACTIONS)


def trained_by(cfg: Config) -> dict:
    """What decides a trained policy: data, model (less the other kind's keys), training, and the
    pre-training when it starts from a pre-trained encoder."""
    if cfg.model.kind == "ad":  # (train.align_to_episodes is CompressedAD's: AD's windows start anywhere)
        return pick(cfg, "seed", "env", "collect", "model", "train",
                    drop=tuple(f"model.{k}" for k in COMPRESSION_KEYS) + ("train.align_to_episodes",))
    pretrained = cfg.inputs.pretrained_encoder_path or cfg.train.reconstruction_weight > 0  # (its head's sizes)
    sections = ("seed", "env", "collect", "model", "train") + (("pretrain",) if pretrained else ())
    return pick(cfg, *sections, drop=("model.context_len",))  # an AD-only key


def require_trained(cfg: Config) -> None:
    """Before any work: inputs.train_run holds a final model that fits this config."""
    run = cfg.inputs.train_run
    if not (Path(run) / FINAL_MODEL).is_file():
        raise ConfigError(f"inputs.train_run: no {FINAL_MODEL} in {run or '(not set)'}")
    load_trained(cfg, run, torch.device("cpu"))


def load_trained(cfg: Config, train_run: str | Path, device) -> torch.nn.Module:
    """A train run's final model, refused unless it was trained on this env and model config
    (the same tasks, so the same held-out split, and the same network)."""
    path = Path(train_run) / FINAL_MODEL
    own = cfg.to_dict()
    state = load_matching(path, ("model_state_dict", "global_step"), own,
                          tuple(f"{s}.{k}" for s in ("env", "model") for k in own[s]))
    model = build_model(cfg)
    load_weights(model, state["model_state_dict"], path)
    return model.to(device).eval()


def load_pretrained_encoder(model: CompressedAD, cfg: Config, log=print) -> None:
    """Load a pre-trained encoder file (inputs.pretrained_encoder_path) into `model`, refusing one
    that does not fit; freeze the encoder if train.freeze_encoder."""
    path = Path(cfg.inputs.pretrained_encoder_path)
    state = load_matching(path, PRETRAINED_KEYS, cfg.to_dict(), ENCODER_CONFIG)
    for part in PRETRAINED_PARTS:
        load_weights(getattr(model, part), state[f"{part}_state_dict"], path, prefix=f"{part}.")
    counts = ", ".join(f"{part} ({len(state[f'{part}_state_dict'])} tensors)" for part in PRETRAINED_PARTS)
    log(f"loaded pre-trained {counts} from {path}, step {state['global_step']}")
    if cfg.train.freeze_encoder:
        model.encoder.requires_grad_(False)
        log(f"encoder frozen: {sum(p.numel() for p in model.encoder.parameters()):,} parameters not trained")
