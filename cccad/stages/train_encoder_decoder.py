"""Stage `train_encoder_decoder` (the classic world model): encode s_t, predict z_{t+1} from
(z_t, a_t), decode the next frame; L1 against the real next frame; encoder, predictor and decoder
all trained."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import Config
from cccad.data.transitions import open_transitions
from cccad.models.world_model import WEIGHTS, Predictor, build_decoder, build_encoder, decode_next, next_frame, weights_file
from cccad.trainer import Objective, fit
from cccad.world_probes import decoding_section, decoding_summary, require_inputs, score_decoder, trained_by

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset")}
PER_VARIANT = False
# the JEPA's own keys: the JEPA variants share one encoder-decoder
JEPA_ONLY = tuple(f"world_model.{k}" for k in ("ema_momentum", "ema_momentum_end", "collapse_spread",
                                                "vicreg_variance_weight", "vicreg_covariance_weight"))
FAMILIES = ("atari",)
TRAINS = True
PARTS = ("encoder", "predictor", "decoder")

REPORT = (decoding_section("encoder-decoder"),)
summary = decoding_summary


def decided_by(cfg: Config) -> dict:
    return {**trained_by(cfg, drop=JEPA_ONLY), "val_samples": cfg.probe.val_samples}  # the scoring set


def preflight(cfg: Config) -> None:
    require_inputs(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS["encoder_decoder"]).is_file()


def loss(model, batch):
    return F.l1_loss(decode_next(model, batch).float(), next_frame(batch)), {}


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    data = open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    model = nn.ModuleDict({"encoder": build_encoder(cfg), "predictor": Predictor(cfg.world_model, data.n_actions),
                           "decoder": build_decoder(cfg)})
    log(f"encoder-decoder: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(data.train_ids):,} training / {len(data.val_ids):,} validation transitions")
    final = lambda m, step: {WEIGHTS["encoder_decoder"]: weights_file(m, PARTS, step, cfg, data.n_actions)}  # noqa: E731
    result = fit(run_dir, cfg, Objective(model, loss, data.train_batch, decided_by(cfg), data.val_batch, final=final),
                 log=log)
    return {**result, **score_decoder(cfg, data, lambda b: decode_next(model, b), run_dir, "encoder-decoder", log)}
