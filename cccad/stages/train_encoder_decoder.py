"""Stage `train_encoder_decoder` (seed 004): encode s_t, predict z_{t+1} from (z_t, a_t), decode
the next frame; L1 against the real next frame; encoder, predictor and decoder all trained."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.stages import world
from cccad.config import Config
from cccad.models.world_model import Predictor
from cccad.trainer import Objective, fit

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("train.dataset", "dataset")}
PER_VARIANT = False
FAMILIES = ("atari",)
TRAINS = True
WEIGHTS = world.ENCODERS["encoder_decoder"]
PARTS = ("encoder", "predictor", "decoder")


def decided_by(cfg: Config) -> dict:
    return {**world.decided_by(cfg), "val_samples": cfg.probe.val_samples}  # the scoring set


def preflight(cfg: Config) -> None:
    world.preflight(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file()


def decode_next(model, batch):
    return model.decoder(model.predictor(model.encoder(batch["state"]), batch["action"]))


def loss(model, batch):
    return F.l1_loss(decode_next(model, batch).float(), world.next_frame(batch)), {}


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    data = world.open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    model = nn.ModuleDict({"encoder": world.encoder(cfg), "predictor": Predictor(cfg.world_model, data.n_actions),
                           "decoder": world.decoder(cfg)})
    log(f"encoder-decoder: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(data.train_ids):,} training / {len(data.val_ids):,} validation transitions")
    batch, val_batch = world.sampler(cfg, data)
    final = lambda m, step: {WEIGHTS: world.weights_file(m, PARTS, step, cfg, data.n_actions)}  # noqa: E731
    result = fit(run_dir, cfg, Objective(model, loss, batch, decided_by(cfg), val_batch, final=final), log=log)
    device = next(model.parameters()).device
    return {**result, **world.score_decoder(cfg, data, lambda b: decode_next(model, b), device,
                                            Path(run_dir) / world.DECODED_FRAMES, "encoder-decoder", log)}
