"""Stage `train_jepa` (the JEPA world model): encode s_t, predict z_{t+1} from (z_t, a_t); L1 against the
EMA target encoder's latent of the real next state. No decoder. After every optimizer step the
target moves toward the encoder: target = m * target + (1 - m) * encoder, with m going linearly
from world_model.ema_momentum to ema_momentum_end. The target never receives gradients.

Collapse: the loss is trivially zero if every state maps to one latent. The seed's objective has
no guard against it; world_model.vicreg_variance_weight and vicreg_covariance_weight add VICReg's
terms on the online latents (a study variant, JEPA-VICReg): keep each latent dim's std across the
batch at 1 or more, and the dims uncorrelated. Either way the latents' std across the batch is
logged (`train/latent_std`), and their spread (that std over the latents' RMS, scale-free:
`train/latent_spread`); a warning is printed when the spread falls below world_model.collapse_spread.
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
PER_VARIANT = True
FAMILIES = ("atari",)
TRAINS = True
PARTS = ("encoder", "predictor", "target_encoder")


REPORT = (Section(
    "JEPA latent spread", "Spread of the online encoder's latents across a batch at the first and last logged "
    "step: a spread falling toward zero is representation collapse.",
    (Column("first spread", lambda m: m.get("first_latent_spread"), 4),
     Column("final spread", lambda m: m.get("final_latent_spread"), 4),
     Column("collapse warnings", lambda m: len(m.get("collapse_warnings") or []), 0))),)


COMPARED = (Column("final latent spread", lambda m: m.get("final_latent_spread"), 4),)


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


def vicreg_terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's variance (mean over dims of max(0, 1 - std across the batch)) and covariance (the
    squared off-diagonal covariances, over the dims) of a batch of latents."""
    z = z.float()
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / max(1, len(z) - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1.0 - std).mean(), off_diagonal.pow(2).sum() / z.shape[1]


def objective(cfg: Config):
    """The JEPA loss: L1 from the predicted to the target's next latent, plus the VICReg terms at
    their weights."""
    wm = cfg.world_model

    def loss(model, batch):
        z = model.encoder(batch["state"])
        z_hat = model.predictor(z, batch["action"])
        with torch.no_grad():
            target = model.target_encoder(batch["next_state"])
        prediction = F.l1_loss(z_hat.float(), target.float())
        variance, covariance = vicreg_terms(z)
        total = prediction
        if wm.vicreg_variance_weight or wm.vicreg_covariance_weight:
            total = total + wm.vicreg_variance_weight * variance + wm.vicreg_covariance_weight * covariance
        z = z.detach()
        return total, {"prediction_loss": prediction.detach(), "variance_loss": variance.detach(),
                       "covariance_loss": covariance.detach(), "latent_std": latent_std(z),
                       "latent_spread": latent_spread(z), "target_std": latent_std(target)}
    return loss


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
    result = fit(run_dir, cfg, Objective(model, objective(cfg), data.train_batch, decided_by(cfg), data.val_batch,
                                         final=final, after_step=lambda m, step: ema_update(m, momentum(cfg, step)),
                                         on_log=on_log), log=log)
    history = result["history"]
    return {**result, "final_latent_std": history[-1]["latent_std"] if history else None,
            "first_latent_spread": history[0]["latent_spread"] if history else None,
            "final_latent_spread": history[-1]["latent_spread"] if history else None,
            "collapse_warnings": [row["step"] for row in history if collapsing(row)]}  # a resumed run's too
