"""Stage `train_jepa_decoder` (seed 004): how much of the frame do JEPA's latents keep? The JEPA
encoder and predictor are loaded and frozen (no gradients, eval mode); only a new decoder learns
to turn the predicted z_{t+1}, standardised (`input_norm`), into the next frame (L1)."""
from __future__ import annotations

from pathlib import Path

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.stages import world
from cccad.config import Config
from cccad.models.world_model import input_norm
from cccad.trainer import Objective, fit, probe_fit_config

NEEDS = ("collect", "train_jepa")
INPUT_KEYS = {"collect": ("train.dataset", "dataset"), "train_jepa": ("world_model.jepa_run", ".")}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
WEIGHTS = "weights/jepa_decoder/model.pt"


def decided_by(cfg: Config) -> dict:
    return world.decided_by(cfg, "probe")


def preflight(cfg: Config) -> None:
    world.preflight(cfg, "jepa")


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file() and (Path(run_dir) / world.DECODED_FRAMES).is_file()


def objective(cfg: Config, data):
    """The probe's Objective and its decode(batch) -> next frames."""
    frozen = world.load_frozen(cfg, "jepa")
    decoder = nn.Sequential(OrderedDict(input_norm=input_norm(cfg.world_model.latent_dim), decoder=world.decoder(cfg)))

    def predicted_latent(batch):
        with torch.no_grad():
            return frozen.predictor(frozen.encoder(batch["state"]), batch["action"])

    def loss(model, batch):
        return F.l1_loss(model(predicted_latent(batch)).float(), world.next_frame(batch)), {}

    batch, _ = world.sampler(cfg, data)
    final = lambda m, step: {WEIGHTS: {"decoder_state_dict": m.decoder.state_dict(),  # noqa: E731
                                       "input_norm_state_dict": m.input_norm.state_dict(),
                                       "global_step": step, "config": cfg.to_dict()}}
    obj = Objective(decoder, loss, batch, decided_by(cfg), tag="probe", final=final, frozen=frozen)
    return obj, lambda b: decoder(predicted_latent(b))


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    data = world.open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    obj, decode = objective(cfg, data)
    log(f"JEPA decoder probe: frozen encoder and predictor from {cfg.world_model.jepa_run}, "
        f"{sum(p.numel() for p in obj.model.parameters()):,} decoder parameters")
    result = fit(run_dir, probe_fit_config(cfg), obj, log=log)
    obj.model.eval()  # scored with the input norm's running statistics
    device = next(obj.model.parameters()).device
    return {**result, **world.score_decoder(cfg, data, decode, device, Path(run_dir) / world.DECODED_FRAMES,
                                            "JEPA decoder probe", log)}
