"""Stage `train_reward_predictor` (seed 004): is the reward readable from frozen latents? For
each encoder (encoder-decoder and JEPA), frozen, a RewardPredictor learns r_t from (z_t, z_{t+1})
with the true next latent z_{t+1} = encoder(s_{t+1}); MSE. Scored on held-out episodes against
the floor to beat: always predicting the mean training reward.

`train_dynamics_reward_predictor` is the same probe fed the *predicted* next latent (see
`next_latent`), so both live here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.stages import world
from cccad.config import Config
from cccad.models.world_model import RewardPredictor
from cccad.plots import bar_plot
from cccad.trainer import Objective, fit, probe_fit_config

NEEDS = ("collect", "train_encoder_decoder", "train_jepa")
INPUT_KEYS = {"collect": ("train.dataset", "dataset"),
              "train_encoder_decoder": ("world_model.encoder_decoder_run", "."),
              "train_jepa": ("world_model.jepa_run", ".")}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
PLOT = "reward_mse.png"
FOLDER = "reward_predictor"  # weights/<encoder>/reward_predictor/model.pt


def decided_by(cfg: Config, dynamics: bool = False) -> dict:
    return {**world.decided_by(cfg, "probe"), "next_latent": "predicted" if dynamics else "true"}


def preflight(cfg: Config) -> None:
    world.preflight(cfg, *world.ENCODERS)


def outputs_valid(cfg: Config, run_dir: Path, folder: str = FOLDER) -> bool:
    return all((Path(run_dir) / "weights" / name / folder / "model.pt").is_file() for name in world.ENCODERS) \
        and (Path(run_dir) / PLOT).is_file()


def next_latent(nets, batch, z, dynamics: bool):
    """z_{t+1}: the encoder's latent of the real next state, or (dynamics) the predictor's guess."""
    return nets.predictor(z, batch["action"]) if dynamics else nets.encoder(batch["next_state"])


def objective(cfg: Config, data, dynamics: bool = False, folder: str = FOLDER):
    """The probes' Objective (heads for both encoders, encoders and predictors frozen) and
    latents(batch) -> {encoder: (z_t, z_{t+1})}."""
    frozen = nn.ModuleDict({name: world.load_frozen(cfg, name) for name in world.ENCODERS})
    train_rewards = data.rewards[data.train_ids]
    mean, scale = float(train_rewards.mean()), float(train_rewards.std()) or 1.0  # heads learn (r - mean) / scale
    torch.manual_seed(cfg.seed)
    heads = nn.ModuleDict({name: RewardPredictor(cfg.world_model) for name in world.ENCODERS})

    def latents(batch):
        with torch.no_grad():
            out = {}
            for name, nets in frozen.items():
                z = nets.encoder(batch["state"])
                out[name] = (z, next_latent(nets, batch, z, dynamics))
            return out

    def loss(model, batch):
        target = (batch["reward"].float() - mean) / scale
        total, stats = 0.0, {}
        for name, (z, z_next) in latents(batch).items():
            err = F.mse_loss(model[name](z, z_next).float(), target)
            total, stats[f"mse_{name}"] = total + err, err.detach()
        return total, stats

    def final(m, step):
        return {f"weights/{name}/{folder}/model.pt": {"reward_predictor_state_dict": m[name].state_dict(),
                                                     "reward_mean": mean, "reward_scale": scale,
                                                     "global_step": step, "config": cfg.to_dict()}
                for name in world.ENCODERS}

    batch, _ = world.sampler(cfg, data)
    obj = Objective(heads, loss, batch, decided_by(cfg, dynamics), tag="probe", final=final, frozen=frozen)
    return obj, latents, mean, scale


def run(cfg: Config, run_dir: Path, log=print, dynamics: bool = False, folder: str = FOLDER) -> dict:
    data = world.open_transitions(cfg)
    obj, latents, mean, scale = objective(cfg, data, dynamics, folder)
    heads = obj.model
    kind = "predicted" if dynamics else "true"
    log(f"reward probes on frozen encoder-decoder and JEPA latents, {kind} next latent; "
        f"training reward mean {mean:.3f}, std {scale:.3f}")
    result = fit(run_dir, probe_fit_config(cfg), obj, log=log)

    # held-out scores in reward units, beside the mean-reward floor
    samples = world.val_samples(cfg, data)
    device = next(heads.parameters()).device
    heads.eval()
    predicted = {name: [] for name in world.ENCODERS}
    with torch.no_grad():
        for i in range(0, len(samples["reward"]), 256):
            for name, (z, z_next) in latents(world.chunk_of(samples, i, i + 256, device)).items():
                predicted[name].append(heads[name](z, z_next).float().cpu() * scale + mean)
    reward = samples["reward"].float()
    scores = {name: {"reward_mse": float(F.mse_loss(torch.cat(p), reward))} for name, p in predicted.items()}
    floor = float(F.mse_loss(torch.full_like(reward, mean), reward))
    rewarded = reward != 0
    for name, p in predicted.items():
        p = torch.cat(p)
        scores[name]["reward_mse_on_rewarded"] = float(F.mse_loss(p[rewarded], reward[rewarded])) if rewarded.any() else None
    bar_plot(Path(run_dir) / PLOT, {name: s["reward_mse"] for name, s in scores.items()},
             f"reward probe, {kind} next latent (held-out)", "MSE", hline=floor, hline_label="mean-reward floor")
    log(f"reward probe ({kind} next latent), held-out MSE: " + ", ".join(
        f"{name} {s['reward_mse']:.4f}" for name, s in scores.items()) + f"; mean-reward floor {floor:.4f} "
        f"on {len(reward)} transitions ({int(rewarded.sum())} rewarded)")
    return {**result, "next_latent": kind, "per_encoder": scores, "mean_reward_mse": floor,
            "val_samples": len(reward), "val_rewarded": int(rewarded.sum()),
            "reward_mean": mean, "reward_scale": scale, "val_reward_mean": float(np.mean(reward.numpy()))}
