"""Stage `train_dynamics_reward_predictor` (a probe of both world models): the reward probe of
`train_reward_predictor` fed the *predicted* next latent, predictor(z_t, a_t), instead of the
encoder's latent of the real next state: can the learned dynamics carry the reward? Encoder and
predictor frozen; for both encoders; output in weights/<encoder>/dynamics_reward_predictor/."""
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
DYNAMICS = True  # the predicted next latent

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
