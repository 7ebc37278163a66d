"""What the world-model stages share: their data, their nets' files, loading them frozen, and
scoring on held-out episodes. Each stage (cccad/stages/train_*.py) keeps its own loss in view.

Files, as in seed 004, under each run folder:
  weights/encoder_decoder/model.pt     encoder, predictor, decoder (train_encoder_decoder)
  weights/jepa/model.pt                encoder, predictor, target_encoder (train_jepa)
  weights/jepa_decoder/model.pt        decoder on frozen JEPA nets (train_jepa_decoder)
  weights/<encoder>/reward_predictor/model.pt, weights/<encoder>/dynamics_reward_predictor/model.pt
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import ATARI_KEYS, Config, ConfigError, pick
from cccad.data.transitions import Transitions
from cccad.envs.atari import channels
from cccad.models.world_model import Decoder, Encoder, Predictor, as_frames
from cccad.plots import frame_grid
from cccad.stages.collect import dataset_config, open_collected, require_dataset
from cccad.trainer import CheckpointError, load_checkpoint, load_weights

ENCODERS = {"encoder_decoder": "weights/encoder_decoder/model.pt", "jepa": "weights/jepa/model.pt"}
DECODED_FRAMES = "decoded_frames.png"  # a decoder stage's grid of real and decoded next frames
RUN_KEYS = {"encoder_decoder": "world_model.encoder_decoder_run", "jepa": "world_model.jepa_run"}
# nets must be built and fed alike to be loaded: the config they were trained with must match these
NET_CONFIG = tuple(f"env.{k}" for k in ATARI_KEYS) + tuple(
    f"world_model.{k}" for k in ("latent_dim", "channels", "predictor_hidden", "action_embed"))


def decided_by(cfg: Config, *extra: str) -> dict:
    """The data, the nets and the training settings (plus `extra` sections, e.g. probe)."""
    return {**dataset_config(cfg), **pick(cfg, "train", "world_model", *extra,
                                          drop=("world_model.encoder_decoder_run", "world_model.jepa_run"))}


def preflight(cfg: Config, *runs: str) -> None:
    require_dataset(cfg, cfg.train.dataset, "train.dataset")
    for name in runs:
        key = RUN_KEYS[name]
        run = getattr(cfg.world_model, key.split(".")[1])
        if not (Path(run) / ENCODERS[name]).is_file():
            raise ConfigError(f"{key}: no {ENCODERS[name]} in {run or '(not set)'}")
        load_frozen(cfg, name)  # refused here, before any work, if it does not fit


def open_transitions(cfg: Config) -> Transitions:
    return Transitions(open_collected(cfg.train.dataset, cfg), cfg.env.frame_stack)


def encoder(cfg: Config) -> Encoder:
    return Encoder(cfg.world_model, cfg.env.frame_stack * channels(cfg.env), cfg.env.frame_size)


def decoder(cfg: Config) -> Decoder:
    return Decoder(cfg.world_model, channels(cfg.env), cfg.env.frame_size)


def next_frame(batch: dict) -> torch.Tensor:
    """The newest frame of next_state, in [0, 1]: what the decoders reconstruct."""
    return batch["next_state"][:, -batch["frame_channels"]:].float() / 255.0


def sampler(cfg: Config, data: Transitions):
    """The training stages' batch function and fixed validation batches."""
    c = channels(cfg.env)

    def batch(rng, size, part, step):
        return {**data.sample(data.train_ids, rng, size, part), "frame_channels": c}

    val_batch = None
    if len(data.val_ids):
        def val_batch(i):
            rng = np.random.default_rng([cfg.seed, 2, i])
            return {**data.sample(data.val_ids, rng, cfg.train.batch_size, slice(None)), "frame_channels": c}
    return batch, val_batch


def weights_file(model: nn.ModuleDict, parts, step: int, cfg: Config, n_actions: int) -> dict:
    """A world-model weights file: `<part>_state_dict` per part, as the seed names them."""
    return {**{f"{p}_state_dict": model[p].state_dict() for p in parts}, "global_step": step,
            "config": cfg.to_dict(), "n_actions": n_actions}


def load_frozen(cfg: Config, name: str, parts=("encoder", "predictor")) -> nn.ModuleDict:
    """The encoder (and predictor) a world-model run trained, refused unless built and fed as
    this config builds and feeds them."""
    path = Path(getattr(cfg.world_model, RUN_KEYS[name].split(".")[1])) / ENCODERS[name]
    state = load_checkpoint(path, tuple(f"{p}_state_dict" for p in parts) + ("config", "n_actions"))
    own = cfg.to_dict()
    for key in NET_CONFIG:
        section, k = key.split(".")
        theirs = state["config"].get(section, {}).get(k)
        if theirs != own[section][k]:
            raise CheckpointError(f"{path}: trained with {key}={theirs!r}, this config has {own[section][k]!r}")
    nets = nn.ModuleDict({"encoder": encoder(cfg), "predictor": Predictor(cfg.world_model, state["n_actions"])})
    for p in parts:
        load_weights(nets[p], state[f"{p}_state_dict"], path, prefix=f"{p}.")
    return nets.requires_grad_(False).eval()


def val_samples(cfg: Config, data: Transitions) -> dict:
    """The fixed held-out transitions every probe and model is scored on."""
    rng = np.random.default_rng([cfg.seed, 3])
    n = min(cfg.probe.val_samples, len(data.val_ids))
    return {**data.batch(np.sort(rng.choice(data.val_ids, n, replace=False))), "frame_channels": channels(cfg.env)}


def chunk_of(samples: dict, start: int, end: int, device) -> dict:
    return {k: v[start:end].to(device) if torch.is_tensor(v) else v for k, v in samples.items()}


@torch.no_grad()
def decode_scores(decode, samples: dict, train_mean_frame: torch.Tensor, device, chunk: int = 256) -> tuple[dict, torch.Tensor]:
    """L1 of `decode(batch)`'s frames (clamped to [0, 1]) on `samples`, beside two floors: the mean training
    frame, and copying the current frame (the newest of state) as the next."""
    target = next_frame(samples)
    c = samples["frame_channels"]
    decoded = torch.cat([as_frames(decode(chunk_of(samples, i, i + chunk, device))).cpu()
                         for i in range(0, len(target), chunk)])
    current = samples["state"][:, -c:].float() / 255.0
    return {"decoder_l1": float(F.l1_loss(decoded, target)),
            "mean_frame_l1": float(F.l1_loss(train_mean_frame.expand_as(target), target)),
            "copy_frame_l1": float(F.l1_loss(current, target))}, decoded


def mean_frame(data: Transitions, n: int = 1024, seed: int = 0) -> torch.Tensor:
    ids = np.sort(np.random.default_rng([seed, 4]).choice(data.train_ids, min(n, len(data.train_ids)), replace=False))
    newest = data.frames[data.newest[ids] + 1]
    return torch.from_numpy(np.asarray(newest, dtype=np.float32).mean(0) / 255.0)


def score_decoder(cfg: Config, data: Transitions, decode, device, grid: Path, name: str, log=print) -> dict:
    """Held-out L1 of a decoder's next frames beside its floors, and a PNG of real vs decoded."""
    samples = val_samples(cfg, data)
    scores, decoded = decode_scores(decode, samples, mean_frame(data, seed=cfg.seed), device)
    n = min(8, len(decoded))
    frame_grid(grid, {"real next frame": next_frame(samples)[:n].numpy(), f"{name}": decoded[:n].numpy()},
               f"{name}: held-out next frames (L1 {scores['decoder_l1']:.4f})")
    log(f"{name}: held-out next-frame L1 {scores['decoder_l1']:.4f} (mean frame {scores['mean_frame_l1']:.4f}, "
        f"copy current frame {scores['copy_frame_l1']:.4f}) on {len(decoded)} transitions")
    return {**scores, "val_samples": len(decoded)}
