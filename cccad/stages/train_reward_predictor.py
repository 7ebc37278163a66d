"""Stage `train_reward_predictor` (a probe of both world models, per JEPA variant): is the reward
readable from frozen latents? For each encoder (encoder-decoder and the variant's JEPA), frozen, a
RewardPredictor learns r_t from (z_t, z_{t+1}) with the true next latent z_{t+1} = encoder(s_{t+1});
MSE. Scored on held-out episodes against the floor to beat, always predicting the mean training
reward, overall and on rewarded and unrewarded transitions, and as a detector of reward events
(cccad/world_probes.py).
"""
from __future__ import annotations

from pathlib import Path

from cccad.config import Config
from cccad.world_probes import (REWARD_COMPARED, require_inputs, reward_probe_decided_by, reward_probe_valid,
                                reward_report, reward_summary, run_reward_probe)

NEEDS = ("collect", "train_encoder_decoder", "train_jepa")
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset"), "train_encoder_decoder": ("inputs.encoder_decoder_run", "."),
              "train_jepa": ("inputs.jepa_run", ".")}
PER_VARIANT = True
FAMILIES = ("atari",)
TRAINS = True
DYNAMICS = False  # the true next latent

REPORT = reward_report(DYNAMICS)
COMPARED = REWARD_COMPARED
summary = reward_summary


def decided_by(cfg: Config) -> dict:
    return reward_probe_decided_by(cfg, DYNAMICS)


def preflight(cfg: Config) -> None:
    require_inputs(cfg, "encoder_decoder", "jepa")


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return reward_probe_valid(run_dir, DYNAMICS)


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    return run_reward_probe(cfg, run_dir, log, DYNAMICS)
