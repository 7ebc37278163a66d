"""Stage `train_jepa` (seed 004): encode s_t, predict z_{t+1} from (z_t, a_t); L1 against the
EMA target encoder's latent of the real next state. No decoder. After every optimizer step the
target moves toward the encoder: target = m * target + (1 - m) * encoder, with m going linearly
from world_model.ema_momentum to ema_momentum_end. The target never receives gradients.

Collapse guard: the loss is trivially zero if every state maps to one latent, so the latents'
std across the batch is logged (`train/latent_std`), and their spread (that std over the latents'
RMS, scale-free: `train/latent_spread`); a warning is printed when the spread falls below
world_model.collapse_spread.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.stages import world
from cccad.config import Config
from cccad.models.world_model import Predictor, latent_spread, latent_std
from cccad.trainer import Objective, fit

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("train.dataset", "dataset")}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
WEIGHTS = world.ENCODERS["jepa"]
PARTS = ("encoder", "predictor", "target_encoder")


def decided_by(cfg: Config) -> dict:
    return world.decided_by(cfg)


def preflight(cfg: Config) -> None:
    world.preflight(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file()


def build(cfg: Config, n_actions: int) -> nn.ModuleDict:
    encoder = world.encoder(cfg)
    target = copy.deepcopy(encoder).requires_grad_(False)
    return nn.ModuleDict({"encoder": encoder, "predictor": Predictor(cfg.world_model, n_actions),
                          "target_encoder": target})


def loss(model, batch):
    z = model.encoder(batch["state"])
    z_hat = model.predictor(z, batch["action"])
    with torch.no_grad():
        target = model.target_encoder(batch["next_state"])
    z = z.detach()
    return F.l1_loss(z_hat.float(), target.float()), {"latent_std": latent_std(z), "latent_spread": latent_spread(z),
                                                      "target_std": latent_std(target)}


def momentum(cfg: Config, step: int) -> float:
    wm = cfg.world_model
    return wm.ema_momentum + (wm.ema_momentum_end - wm.ema_momentum) * step / max(1, cfg.train.steps - 1)


@torch.no_grad()
def ema_update(model: nn.ModuleDict, m: float) -> None:
    for target, online in zip(model.target_encoder.parameters(), model.encoder.parameters()):
        target.mul_(m).add_(online.detach(), alpha=1.0 - m)


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    data = world.open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    model = build(cfg, data.n_actions)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"JEPA: {trained:,} trained parameters (+ EMA target encoder), "
        f"{len(data.train_ids):,} training / {len(data.val_ids):,} validation transitions")
    batch, val_batch = world.sampler(cfg, data)
    def collapsing(row) -> bool:
        return row["latent_spread"] < cfg.world_model.collapse_spread

    def on_log(row, log):
        if collapsing(row):
            log(f"WARNING: JEPA latents may be collapsing: spread (std across the batch / RMS) "
                f"{row['latent_spread']:.2e} < world_model.collapse_spread {cfg.world_model.collapse_spread} "
                f"at step {row['step']}")

    final = lambda m, step: {WEIGHTS: world.weights_file(m, PARTS, step, cfg, data.n_actions)}  # noqa: E731
    result = fit(run_dir, cfg, Objective(model, loss, batch, decided_by(cfg), val_batch, final=final,
                                         after_step=lambda m, step: ema_update(m, momentum(cfg, step)),
                                         on_log=on_log), log=log)
    history = result["history"]
    return {**result, "final_latent_std": history[-1]["latent_std"] if history else None,
            "first_latent_spread": history[0]["latent_spread"] if history else None,
            "final_latent_spread": history[-1]["latent_spread"] if history else None,
            "collapse_warnings": [row["step"] for row in history if collapsing(row)]}  # a resumed run's too
