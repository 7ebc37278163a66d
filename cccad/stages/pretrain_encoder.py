"""Stage `pretrain_encoder` (CompressedAD stage 1): the encoder learns to compress by
reconstruction. Windows of d chunks are compressed recursively into latents of depth d, and a
small decoder reconstructs every compressed transition (s, a, r, s') from them; MSE loss. The
curriculum's phases set which depths a step may draw.

Output: `encoder-pretrained-final.pt` with exactly the keys of the CompressedAD encoder
pre-training guide (encoder_state_dict, embed_context_state_dict, embed_ln_state_dict,
global_step, config). The resumable training state
lives in checkpoints/ like every other training stage's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cccad.config import Config, ConfigError, pick
from cccad.data.collected import open_collected, require_dataset
from cccad.data.histories import describe_align, sample_windows, split_streams, window_align
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.models.compressed_ad import EncoderPretrainer, transition_columns
from cccad.models.policies import PRETRAINED_FILE, PRETRAINED_PARTS
from cccad.sections import Column, Section
from cccad.trainer import Objective, fit

NEEDS = ("collect",)
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset")}
PER_VARIANT = False
FAMILIES = ("darkroom",)
TRAINS = True
# train keys that only the action-prediction stage uses, and decoder-only model keys
NOT_USED = ("train.steps", "train.batch_size", "train.lr", "train.num_warmup_steps", "train.freeze_encoder",
            "model.kind", "model.context_len", "model.recent_len", "model.n_layer")


# compared between variants that pre-train their own encoder (e.g. another encoder kind)
COMPARED = (Column("validation correlation", lambda m: m.get("final_val_correlation")),)
REPORT = (Section(
    "Encoder pre-training (reconstruction, depth curriculum)", "Correlation between reconstructed and true "
    "transitions on held-out streams at the end of pre-training.",
    (*COMPARED,
     Column("validation loss", lambda m: m.get("final_val_loss"), 4),
     Column("first training loss", lambda m: m.get("initial_loss"), 4)), labels=("env",)),)


def summary(m: dict) -> str:
    corr = m.get("final_val_correlation")
    return f"reconstruction correlation on held-out streams {corr:.3f}" if corr is not None else "no held-out streams"


def decided_by(cfg: Config) -> dict:
    return pick(cfg, "seed", "env", "collect", "model", "pretrain", "train", drop=NOT_USED)


def preflight(cfg: Config) -> None:
    require_dataset(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / PRETRAINED_FILE).is_file()


def step_depth(cfg: Config, rng: np.random.Generator, step: int) -> tuple[int, int]:
    """(phase, depth) of a step: the depth is drawn from the phase's allowed depths."""
    phase = cfg.pretrain.phase_of(step)
    depths = cfg.pretrain.curriculum[phase].depths
    return phase, int(depths[rng.integers(len(depths))])


def planned_depth_counts(cfg: Config) -> list[dict[int, int]]:
    """Samples per depth in each phase over the whole schedule (replays each step's draw)."""
    counts = [dict.fromkeys(p.depths, 0) for p in cfg.pretrain.curriculum]
    for step in range(cfg.pretrain.pretrain_steps):
        phase, depth = step_depth(cfg, np.random.default_rng([cfg.seed, step]), step)
        counts[phase][depth] += cfg.pretrain.pretrain_batch_size
    return counts


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten().float(), b.flatten().float()
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def reconstruction_loss(model, batch):
    target = batch["features"][..., transition_columns(OBS_DIM, N_ACTIONS)]
    recon = model(batch["features"]).float()
    return F.mse_loss(recon, target), {"correlation": correlation(recon.detach(), target)}


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    ds = open_collected(cfg.inputs.dataset, cfg)
    pc, c = cfg.pretrain, cfg.model.chunk_len
    n_streams, steps = ds["actions"].shape
    deepest = max(d for p in pc.curriculum for d in p.depths)
    if deepest * c > steps:
        raise ConfigError(f"pretrain.curriculum: depth {deepest} x model.chunk_len {c} exceeds the "
                          f"{steps} transitions of each history")
    train_ids, val_ids = split_streams(n_streams, cfg.train.val_fraction, cfg.seed)
    scale = cfg.env.size - 1
    drawn = [dict.fromkeys(p.depths, 0) for p in pc.curriculum]
    # CompressedAD's encoder, whatever model.kind this stage's shared config holds (the default, AD's)
    align = window_align(cfg, "compressed_ad")

    def batch(rng, size, part, step):
        phase, depth = step_depth(cfg, rng, step)
        drawn[phase][depth] += size
        return sample_windows(ds, train_ids, rng, size, depth * c, part, scale, align)

    def val_batch(rng, size, i):  # every depth in turn
        return sample_windows(ds, val_ids, rng, size, (1 + i % deepest) * c, slice(None), scale, align)

    planned = planned_depth_counts(cfg)
    log("samples per compression depth: " + "; ".join(
        f"phase {i + 1} ({p.steps} steps): " + ", ".join(f"depth {d}: {n:,}" for d, n in planned[i].items())
        for i, p in enumerate(pc.curriculum)))
    torch.manual_seed(cfg.seed)
    model = EncoderPretrainer(cfg.model, pc, OBS_DIM, N_ACTIONS)
    log(f"encoder pre-training: {sum(p.numel() for p in model.parameters()):,} parameters "
        f"({sum(p.numel() for p in model.encoder.parameters()):,} in the encoder), "
        f"{cfg.model.n_latent} latents per {c}-transition chunk; {describe_align(align)}")
    def final(m, step):  # the pre-training guide's file, exactly
        return {PRETRAINED_FILE: {**{f"{part}_state_dict": getattr(m, part).state_dict() for part in PRETRAINED_PARTS},
                                  "global_step": step, "config": cfg.to_dict()}}

    result = fit(run_dir, cfg.for_pretraining(), Objective(model, reconstruction_loss, batch, decided_by(cfg),
                                                          val_batch if len(val_ids) else None, tag="pretrain",
                                                          final=final), log=log)
    history = result["history"]
    val_rows = [r for r in history if "val_correlation" in r]
    result.update({
        "initial_loss": history[0]["loss"] if history else None,
        "final_correlation": history[-1].get("correlation") if history else None,
        "final_val_correlation": val_rows[-1]["val_correlation"] if val_rows else None,
        "samples_per_depth_planned": [{str(d): n for d, n in p.items()} for p in planned],
        # drawn by this process: equals the plan unless the run resumed mid-way
        "samples_per_depth_drawn_this_process": [{str(d): n for d, n in p.items()} for p in drawn],
    })
    return result
