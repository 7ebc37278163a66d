"""Stage `train_jepa_decoder` (a probe of the JEPA): how much of the frame do JEPA's latents
keep? The JEPA encoder and predictor are loaded and frozen (no gradients, eval mode); only a new
decoder learns to turn the predicted z_{t+1}, standardised (`input_norm`), into the next frame (L1).
The encoder-decoder of the same data is scored beside it on the same held-out transitions, so
the report can pair the two per seed."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import Config
from cccad.data.transitions import open_transitions
from cccad.models.world_model import build_decoder, decode_next, input_norm, load_frozen, next_frame
from cccad.sections import Column
from cccad.trainer import Objective, fit
from cccad.world_probes import (DECODED_FRAMES, decoder_scores, decoding_against_encoder_decoder, decoding_section,
                                decoding_summary, require_inputs, score_decoder, trained_by)

NEEDS = ("collect", "train_encoder_decoder", "train_jepa")
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset"), "train_encoder_decoder": ("inputs.encoder_decoder_run", "."),
              "train_jepa": ("inputs.jepa_run", ".")}
PER_VARIANT = True
FAMILIES = ("atari",)
TRAINS = True
WEIGHTS = "weights/jepa_decoder/model.pt"

REPORT = (decoding_section("JEPA + decoder probe"), decoding_against_encoder_decoder())
COMPARED = (Column("JEPA decoder L1", lambda m: m["decoder_l1"], 4),
            Column("JEPA decoder change skill", lambda m: m.get("change_skill")))
summary = decoding_summary


def decided_by(cfg: Config) -> dict:
    return trained_by(cfg, "probe")


def preflight(cfg: Config) -> None:
    require_inputs(cfg, "jepa", "encoder_decoder")


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file() and (Path(run_dir) / DECODED_FRAMES).is_file()


def objective(cfg: Config, data):
    """The probe's Objective and its decode(batch) -> next frames."""
    frozen = load_frozen(cfg, "jepa")
    decoder = nn.Sequential(OrderedDict(input_norm=input_norm(cfg.world_model.latent_dim), decoder=build_decoder(cfg)))

    def predicted_latent(batch):
        with torch.no_grad():
            return frozen.predictor(frozen.encoder(batch["state"]), batch["action"])

    def loss(model, batch):
        return F.l1_loss(model(predicted_latent(batch)).float(), next_frame(batch)), {}

    final = lambda m, step: {WEIGHTS: {"decoder_state_dict": m.decoder.state_dict(),  # noqa: E731
                                       "input_norm_state_dict": m.input_norm.state_dict(),
                                       "global_step": step, "config": cfg.to_dict()}}
    obj = Objective(decoder, loss, data.train_batch, decided_by(cfg), tag="probe", final=final, frozen=frozen)
    return obj, lambda b: decoder(predicted_latent(b))


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    data = open_transitions(cfg)
    torch.manual_seed(cfg.seed)
    obj, decode = objective(cfg, data)
    log(f"JEPA decoder probe: frozen encoder and predictor from {cfg.inputs.jepa_run}, "
        f"{sum(p.numel() for p in obj.model.parameters()):,} decoder parameters")
    result = fit(run_dir, cfg.for_probe(), obj, log=log)
    obj.model.eval()  # scored with the input norm's running statistics
    scores = score_decoder(cfg, data, decode, run_dir, "JEPA decoder probe", log)
    ed = load_frozen(cfg, "encoder_decoder", parts=("encoder", "predictor", "decoder"))
    ed_scores, _, _ = decoder_scores(cfg, data, lambda b: decode_next(ed, b))
    log(f"encoder-decoder ({cfg.inputs.encoder_decoder_run}), same transitions: {decoding_summary(ed_scores)}")
    return {**result, **scores, "encoder_decoder": ed_scores}
