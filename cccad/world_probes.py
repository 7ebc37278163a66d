"""What the world-model stages share beyond their data (cccad/data/transitions.py) and nets
(cccad/models/world_model.py): the config that decides their runs, their inputs checked before any
work, held-out scoring of next-frame decoders, and the reward probe, on the true or the predicted
next latent (stages train_reward_predictor and train_dynamics_reward_predictor); and how the
report and the command line show them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import Config, ConfigError, pick
from cccad.data.collected import dataset_config, require_dataset
from cccad.data.transitions import Transitions, open_transitions
from cccad.models.world_model import WEIGHTS, RewardPredictor, as_frames, load_frozen, next_frame, trained_run
from cccad.plots import bar_plot, frame_grid
from cccad.runtime import device
from cccad.sections import Bars, Column, RunImage, Section
from cccad.trainer import Objective, fit

DECODED_FRAMES = "decoded_frames.png"  # a decoder stage's grid of real and decoded next frames
REWARD_PLOT = "reward_mse.png"


def trained_by(cfg: Config, *extra: str) -> dict:
    """What decides a world-model run: the data, the nets and the training settings (plus `extra`
    sections, e.g. probe)."""
    return {**dataset_config(cfg), **pick(cfg, "train", "world_model", *extra)}


def require_inputs(cfg: Config, *encoders: str) -> None:
    """Before any work: the dataset, and each trained encoder's run (a key of WEIGHTS), fit this config."""
    require_dataset(cfg)
    for name in encoders:
        run = trained_run(cfg, name)
        if not (run / WEIGHTS[name]).is_file():
            raise ConfigError(f"inputs.{name}_run: no {WEIGHTS[name]} in {getattr(cfg.inputs, f'{name}_run') or '(not set)'}")
        load_frozen(cfg, name)


@torch.no_grad()
def in_chunks(fn, samples: dict, dev, chunk: int = 256) -> list:
    """fn(batch) over `samples` in batches of `chunk` on `dev`: the outputs, in order."""
    n = len(samples["state"])
    return [fn({k: v[i:i + chunk].to(dev) if torch.is_tensor(v) else v for k, v in samples.items()})
            for i in range(0, n, chunk)]


def score_decoder(cfg: Config, data: Transitions, decode, run_dir: Path, name: str, log=print) -> dict:
    """Held-out L1 of `decode(batch)`'s next frames (clamped to [0, 1]) beside two floors, the mean
    training frame and copying the current frame (the newest of state), and a PNG of real vs
    decoded frames."""
    samples = data.scoring_set(cfg.seed, cfg.probe.val_samples)
    target, c = next_frame(samples), samples["frame_channels"]
    decoded = torch.cat([as_frames(out).cpu() for out in in_chunks(decode, samples, device())])
    current = samples["state"][:, -c:].float() / 255.0
    scores = {"decoder_l1": float(F.l1_loss(decoded, target)),
              "mean_frame_l1": float(F.l1_loss(data.mean_frame(cfg.seed).expand_as(target), target)),
              "copy_frame_l1": float(F.l1_loss(current, target))}
    n = min(8, len(decoded))
    frame_grid(Path(run_dir) / DECODED_FRAMES, {"real next frame": target[:n].numpy(), name: decoded[:n].numpy()},
               f"{name}: held-out next frames (L1 {scores['decoder_l1']:.4f})")
    log(f"{name}: held-out next-frame L1 {scores['decoder_l1']:.4f} (mean frame {scores['mean_frame_l1']:.4f}, "
        f"copy current frame {scores['copy_frame_l1']:.4f}) on {len(decoded)} transitions")
    return {**scores, "val_samples": len(decoded)}


def decoding_section(model: str) -> Section:
    """The report's table of next-frame decoders (both decoder stages' rows: `model` names one)."""
    return Section(
        "Next-frame decoding", "Mean absolute error (pixels in [0, 1]) of the decoded next frame on held-out "
        "transitions, against two floors: copying the current frame, and the mean frame.",
        (Column("decoder L1", lambda m: m["decoder_l1"], 4), Column("copy-frame L1", lambda m: m["copy_frame_l1"], 4),
         Column("mean-frame L1", lambda m: m["mean_frame_l1"], 4)), labels=("env", "model"), row=model,
        plots=(Bars("decoder_probe", "held-out next-frame L1", "L1", values=lambda m: {"": m["decoder_l1"]},
                    floor=lambda m: m["copy_frame_l1"], floor_label="copy current frame"),
               RunImage(DECODED_FRAMES, f"real and decoded next frames, {model}")))


def decoding_summary(m: dict) -> str:
    return (f"held-out next-frame L1 {m['decoder_l1']:.4f} (mean frame {m['mean_frame_l1']:.4f}, copy current "
            f"frame {m['copy_frame_l1']:.4f})")


# ----------------------------------------------------------------------------- reward probe

def reward_folder(dynamics: bool) -> str:
    """Where each encoder's head is saved: weights/<encoder>/<folder>/model.pt."""
    return "dynamics_reward_predictor" if dynamics else "reward_predictor"


def reward_section(dynamics: bool) -> Section:
    """The report's table of reward probes: a row per encoder and next latent (true or predicted)."""
    kind = "predicted" if dynamics else "true"
    return Section(
        "Reward probes", "MSE of the reward predicted from frozen latents (z_t and the true or the predicted "
        "z_{t+1}) on held-out transitions, against always predicting the mean training reward.",
        (Column("reward MSE", lambda m: m.get("reward_mse"), 4), Column("mean-reward floor", lambda m: m["mean_reward_mse"], 4),
         Column("rewarded held-out transitions", lambda m: m.get("val_rewarded"), 0)),
        labels=("env", "encoder", "next latent"),
        views=lambda m: {(enc, kind): {**m, **s} for enc, s in m["per_encoder"].items()},
        plots=(Bars("reward_probe", "held-out reward MSE", "MSE", values=lambda m: {"": m.get("reward_mse")},
                    floor=lambda m: m["mean_reward_mse"], floor_label="mean-reward floor"),))


def reward_summary(m: dict) -> str:
    return ("held-out reward MSE " + ", ".join(f"{k} {v['reward_mse']:.4f}" for k, v in m["per_encoder"].items())
            + f" (mean-reward floor {m['mean_reward_mse']:.4f})")


def reward_probe_decided_by(cfg: Config, dynamics: bool) -> dict:
    return {**trained_by(cfg, "probe"), "next_latent": "predicted" if dynamics else "true"}


def reward_probe_valid(run_dir: Path, dynamics: bool) -> bool:
    return all((Path(run_dir) / "weights" / name / reward_folder(dynamics) / "model.pt").is_file()
               for name in WEIGHTS) and (Path(run_dir) / REWARD_PLOT).is_file()


def reward_objective(cfg: Config, data: Transitions, dynamics: bool):
    """The reward probes' Objective (a head per encoder, encoders and predictors frozen), their
    latents(batch) -> {encoder: (z_t, z_{t+1})}, and the training reward's mean and scale (heads
    learn the standardised reward). z_{t+1} is the encoder's latent of the real next state, or
    (dynamics) the predictor's guess from (z_t, a_t)."""
    frozen = nn.ModuleDict({name: load_frozen(cfg, name) for name in WEIGHTS})
    train_rewards = data.rewards[data.train_ids]
    mean, scale = float(train_rewards.mean()), float(train_rewards.std()) or 1.0
    torch.manual_seed(cfg.seed)
    heads = nn.ModuleDict({name: RewardPredictor(cfg.world_model) for name in WEIGHTS})

    def latents(batch):
        with torch.no_grad():
            out = {}
            for name, nets in frozen.items():
                z = nets.encoder(batch["state"])
                out[name] = (z, nets.predictor(z, batch["action"]) if dynamics else nets.encoder(batch["next_state"]))
            return out

    def loss(model, batch):
        target = (batch["reward"].float() - mean) / scale
        total, stats = 0.0, {}
        for name, (z, z_next) in latents(batch).items():
            err = F.mse_loss(model[name](z, z_next).float(), target)
            total, stats[f"mse_{name}"] = total + err, err.detach()
        return total, stats

    def final(m, step):
        return {f"weights/{name}/{reward_folder(dynamics)}/model.pt": {
            "reward_predictor_state_dict": m[name].state_dict(), "reward_mean": mean, "reward_scale": scale,
            "global_step": step, "config": cfg.to_dict()} for name in WEIGHTS}

    obj = Objective(heads, loss, data.train_batch, reward_probe_decided_by(cfg, dynamics), tag="probe", final=final,
                    frozen=frozen)
    return obj, latents, mean, scale


def run_reward_probe(cfg: Config, run_dir: Path, log, dynamics: bool) -> dict:
    """Train the reward heads, then score them on the held-out transitions in reward units,
    overall and on the rewarded ones, beside the floor of always predicting the mean training reward."""
    data = open_transitions(cfg)
    obj, latents, mean, scale = reward_objective(cfg, data, dynamics)
    heads = obj.model
    kind = "predicted" if dynamics else "true"
    log(f"reward probes on frozen encoder-decoder and JEPA latents, {kind} next latent; "
        f"training reward mean {mean:.3f}, std {scale:.3f}")
    result = fit(run_dir, cfg.for_probe(), obj, log=log)

    samples = data.scoring_set(cfg.seed, cfg.probe.val_samples)
    heads.eval()
    outputs = in_chunks(lambda b: {name: heads[name](z, z_next).float().cpu() * scale + mean
                                   for name, (z, z_next) in latents(b).items()}, samples, device())
    predicted = {name: torch.cat([out[name] for out in outputs]) for name in WEIGHTS}
    reward = samples["reward"].float()
    rewarded = reward != 0
    scores = {name: {"reward_mse": float(F.mse_loss(p, reward)),
                     "reward_mse_on_rewarded": float(F.mse_loss(p[rewarded], reward[rewarded])) if rewarded.any() else None}
              for name, p in predicted.items()}
    floor = float(F.mse_loss(torch.full_like(reward, mean), reward))
    bar_plot(Path(run_dir) / REWARD_PLOT, {name: s["reward_mse"] for name, s in scores.items()},
             f"reward probe, {kind} next latent (held-out)", "MSE", hline=floor, hline_label="mean-reward floor")
    log(f"reward probe ({kind} next latent), held-out MSE: " + ", ".join(
        f"{name} {s['reward_mse']:.4f}" for name, s in scores.items()) + f"; mean-reward floor {floor:.4f} "
        f"on {len(reward)} transitions ({int(rewarded.sum())} rewarded)")
    return {**result, "next_latent": kind, "per_encoder": scores, "mean_reward_mse": floor,
            "val_samples": len(reward), "val_rewarded": int(rewarded.sum()),
            "reward_mean": mean, "reward_scale": scale, "val_reward_mean": float(np.mean(reward.numpy()))}
