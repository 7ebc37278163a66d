"""Stage `train_dynamics_reward_predictor` (seed 004): the reward probe of
`train_reward_predictor` fed the *predicted* next latent, predictor(z_t, a_t), instead of the
encoder's latent of the real next state: can the learned dynamics carry the reward? Encoder and
predictor frozen; for both encoders; output in weights/<encoder>/dynamics_reward_predictor/."""
from __future__ import annotations

from pathlib import Path

from cccad.config import Config
from cccad.stages import train_reward_predictor as reward_probe

NEEDS = reward_probe.NEEDS
INPUT_KEYS = reward_probe.INPUT_KEYS
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
FOLDER = "dynamics_reward_predictor"
preflight = reward_probe.preflight


def decided_by(cfg: Config) -> dict:
    return reward_probe.decided_by(cfg, dynamics=True)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return reward_probe.outputs_valid(cfg, run_dir, FOLDER)


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    return reward_probe.run(cfg, run_dir, log, dynamics=True, folder=FOLDER)
