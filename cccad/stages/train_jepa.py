"""Stage `train_jepa` (the JEPA world model): encode s_t, predict z_{t+1} from (z_t, a_t); L1 against the
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

from cccad.config import Config
from cccad.data.transitions import open_transitions
from cccad.models.world_model import WEIGHTS, Predictor, build_encoder, latent_spread, latent_std, weights_file
from cccad.sections import Column, Section
from cccad.trainer import Objective, fit
from cccad.world_probes import require_inputs, trained_by

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset")}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
PARTS = ("encoder", "predictor", "target_encoder")


REPORT = (Section(
    "JEPA latent spread", "Spread of the online encoder's latents across a batch at the first and last logged "
    "step: a spread falling toward zero is representation collapse.",
    (Column("first spread", lambda m: m.get("first_latent_spread"), 4),
     Column("final spread", lambda m: m.get("final_latent_spread"), 4),
     Column("collapse warnings", lambda m: len(m.get("collapse_warnings") or []), 0)), labels=("env",)),)


def summary(m: dict) -> str:
    return (f"latent spread {m['first_latent_spread']:.4f} -> {m['final_latent_spread']:.4f}, "
            f"{len(m['collapse_warnings'])} collapse warnings")


def decided_by(cfg: Config) -> dict:
    return trained_by(cfg)


def preflight(cfg: Config) -> None:
    require_inputs(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS["jepa"]).is_file()


def build(cfg: Config, n_actions: int) -> nn.ModuleDict:
    encoder = build_encoder(cfg)
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
    data = open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    model = build(cfg, data.n_actions)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"JEPA: {trained:,} trained parameters (+ EMA target encoder), "
        f"{len(data.train_ids):,} training / {len(data.val_ids):,} validation transitions")

    def collapsing(row) -> bool:
        return row["latent_spread"] < cfg.world_model.collapse_spread

    def on_log(row, log):
        if collapsing(row):
            log(f"WARNING: JEPA latents may be collapsing: spread (std across the batch / RMS) "
                f"{row['latent_spread']:.2e} < world_model.collapse_spread {cfg.world_model.collapse_spread} "
                f"at step {row['step']}")

    final = lambda m, step: {WEIGHTS["jepa"]: weights_file(m, PARTS, step, cfg, data.n_actions)}  # noqa: E731
    result = fit(run_dir, cfg, Objective(model, loss, data.train_batch, decided_by(cfg), data.val_batch, final=final,
                                         after_step=lambda m, step: ema_update(m, momentum(cfg, step)),
                                         on_log=on_log), log=log)
    history = result["history"]
    return {**result, "final_latent_std": history[-1]["latent_std"] if history else None,
            "first_latent_spread": history[0]["latent_spread"] if history else None,
            "final_latent_spread": history[-1]["latent_spread"] if history else None,
            "collapse_warnings": [row["step"] for row in history if collapsing(row)]}  # a resumed run's too
