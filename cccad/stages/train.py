"""Stage `train`: action prediction on learning histories: AD (full context) or CompressedAD
(stage 2), from random init, with an auxiliary reconstruction loss, or from a pre-trained
encoder, fine-tuned or frozen. With `train.eval_every`, in-context evaluations on held-out goals
during training show how fast it learns to act; the run also reports how fast its loss fell and
how much it oscillated."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cccad.checkpoint import FINAL_MODEL
from cccad.config import Config, ConfigError, pick
from cccad.data.collected import open_collected, require_dataset
from cccad.data.histories import describe_align, sample_windows, split_streams, window_align
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.incontext import evaluate as in_context
from cccad.models.compressed_ad import WithReconstruction, transition_columns
from cccad.models.policies import PRETRAINED_FILE, build_model, load_pretrained_encoder, trained_by
from cccad.runtime import device
from cccad.sections import Column, Section
from cccad.trainer import Objective, fit

NEEDS = ("collect",)
# pretrain_encoder is wired only for variants whose inputs.pretrained_encoder_path is "@pretrain_encoder"
INPUT_KEYS = {"collect": ("inputs.dataset", "dataset"),
              "pretrain_encoder": ("inputs.pretrained_encoder_path", PRETRAINED_FILE)}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = True
SMOOTHING = 5  # logged rows in the moving average of the training loss
THRESHOLD_SHARE = 0.9  # a learning-speed threshold: this share of the level every compared run reached

REPORT = (Section(
    "Action prediction (train)", "Cross-entropy of the next action on validation streams, against the uniform "
    "guess (chance loss). How fast it learned: the steps until the training loss (moving average of "
    f"{SMOOTHING} logged steps) reached the loss threshold, and until the held-out in-context return (in-training "
    "evaluations) reached the return threshold. Both thresholds are the same for every run of an env and model "
    f"kind, so for every variant and seed compared: {THRESHOLD_SHARE:.0%} of the way from chance loss to the lowest "
    f"loss that all those runs reached, and {THRESHOLD_SHARE:.0%} of the highest return that all of them reached "
    "(–: some run learned nothing, or ran no in-training evaluation). Without a threshold: the mean training loss over the run (the area under its curve per "
    "step: lower learned sooner) and the mean held-out return over the in-training evaluations. How steadily: the "
    "loss's oscillation, the RMS of the logged training loss about its moving average over the second half. With "
    "a reconstruction loss, every loss here is its action part, as in the training curves below.",
    (Column("validation loss", lambda m: m.get("final_val_loss"), 4), Column("chance loss", lambda m: m.get("chance_loss"), 4),
     Column("loss threshold", lambda m: m.get("loss_threshold"), 4),
     Column("steps to loss", lambda m: m.get("steps_to_loss"), 0),
     Column("return threshold", lambda m: m.get("return_threshold")),
     Column("steps to return", lambda m: m.get("steps_to_return"), 0),
     Column("mean loss", lambda m: m.get("mean_loss"), 4),
     Column("mean in-training return", lambda m: m.get("mean_eval_return")),
     Column("loss oscillation", lambda m: m.get("loss_oscillation"), 4),
     Column("samples/s", lambda m: m.get("samples_per_s"), 0))),)


# what a study's comparisons between variants compare (cccad/report.py)
COMPARED = (Column("steps to loss", lambda m: m.get("steps_to_loss"), 0, basis=lambda m: m.get("loss_threshold")),
            Column("steps to return", lambda m: m.get("steps_to_return"), 0, basis=lambda m: m.get("return_threshold")),
            Column("mean loss", lambda m: m.get("mean_loss"), 4),
            Column("mean in-training return", lambda m: m.get("mean_eval_return")),
            Column("loss oscillation", lambda m: m.get("loss_oscillation"), 4),
            Column("validation loss", lambda m: m.get("final_val_loss"), 4))


def summary(m: dict) -> str:
    val = m.get("final_val_loss")
    return ((f"validation loss {val:.4f}" if val is not None else f"training loss {m['final_loss']:.4f}")
            + f" (chance {m['chance_loss']:.4f}); mean loss {m['mean_loss']:.4f}"
            + (f", mean in-training return {m['mean_eval_return']:.3f}" if m.get("mean_eval_return") is not None else "")
            + (f"; oscillation {m['loss_oscillation']:.4f}" if m.get("loss_oscillation") is not None else ""))


def decided_by(cfg: Config) -> dict:
    if not cfg.train.eval_every:
        return trained_by(cfg)
    # its in-context evaluations during training play by these (their stream count is
    # train.eval_streams_per_task; CompressedAD's window moves by its chunks)
    drop = ("evaluate.streams_per_task",) + (("evaluate.window_stride",) if cfg.model.kind == "compressed_ad" else ())
    return {**trained_by(cfg), **pick(cfg, "evaluate", drop=drop)}


def preflight(cfg: Config) -> None:
    require_dataset(cfg)
    path = cfg.inputs.pretrained_encoder_path
    if path.startswith("@"):
        raise ConfigError(f"inputs.pretrained_encoder_path: '{path}' names a study stage; outside a study give a file")
    if path and not Path(path).is_file():
        raise ConfigError(f"inputs.pretrained_encoder_path: no file {path}")
    if path:  # refused here, before any work, if it does not fit
        load_pretrained_encoder(build_model(cfg), cfg, log=lambda *_: None)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / FINAL_MODEL).is_file()


def policy_loss(logits, batch):
    actions = batch["actions"][:, -logits.shape[1]:]  # CompressedAD predicts the recent part only
    loss = F.cross_entropy(logits.flatten(0, 1).float(), actions.flatten())
    return loss, {"accuracy": (logits.argmax(-1) == actions).float().mean().detach()}


def action_loss(model, batch):
    return policy_loss(model(batch["features"]), batch)


def with_reconstruction_loss(weight: float):
    """Action loss plus `weight` x the MSE of the transitions reconstructed from the window's latents."""
    def loss(model, batch):
        logits, latents = model.policy(batch["features"], with_latents=True)
        total, stats = policy_loss(logits, batch)
        stats["action_loss"] = total.detach()
        if latents is not None:
            n = batch["features"].shape[1] - logits.shape[1]  # the compressed transitions
            target = batch["features"][:, :n, transition_columns(OBS_DIM, N_ACTIONS)]
            reconstruction = F.mse_loss(model.reconstruction(latents, n).float(), target)
            total, stats["reconstruction"] = total + weight * reconstruction, reconstruction.detach()
        return total, stats
    return loss


def window_length(cfg: Config, rng: np.random.Generator) -> int:
    """AD: context_len transitions. CompressedAD: d chunks (d uniform in 0..max depth, so every
    depth the evaluation meets is trained) then recent_len transitions."""
    m = cfg.model
    if m.kind == "ad":
        return m.context_len
    return int(rng.integers(0, m.max_compression_depth + 1)) * m.chunk_len + m.recent_len


def loss_rows(history: list[dict], prefix: str = "") -> list[dict]:
    """The history's rows that logged a (prefix "val_": validation) loss."""
    return [r for r in history if r.get(f"{prefix}loss") is not None]


def action_losses(history: list[dict], prefix: str = "") -> np.ndarray:
    """The logged (prefix "val_": validation) action losses: with a reconstruction loss, its logged
    action part (runs from before 2026-12-07 did not log it: their total loss)."""
    return np.array([r.get(f"{prefix}action_loss", r[f"{prefix}loss"]) for r in loss_rows(history, prefix)])


def trailing_mean(loss: np.ndarray) -> np.ndarray:
    return np.array([loss[max(0, i - SMOOTHING + 1):i + 1].mean() for i in range(len(loss))])


def learning_speed(history: list[dict]) -> dict:
    """From the logged history, with no threshold: the mean action loss and the mean in-training
    return (how soon it learned), and the loss's oscillation: the RMS of the logged loss about its
    centred moving average, over the second half of the run; the final validation loss's action part."""
    loss = action_losses(history)
    val = action_losses(history, "val_")
    centred = np.convolve(loss, np.ones(SMOOTHING) / SMOOTHING, mode="valid")  # rows SMOOTHING//2 .. -SMOOTHING//2
    inner = loss[SMOOTHING // 2:len(loss) - SMOOTHING // 2]
    half = slice(len(inner) // 2, None)
    returns = [r["eval_normalised_return"] for r in history if "eval_normalised_return" in r]
    return {"mean_loss": float(loss.mean()), "mean_eval_return": float(np.mean(returns)) if returns else None,
            "loss_oscillation": float(np.sqrt(np.mean((inner[half] - centred[half]) ** 2))) if len(inner) > 1 else None,
            "final_val_loss": float(val[-1]) if len(val) else None}


def across_runs(runs: list[tuple[Config, dict]]) -> None:
    """Steps to a loss and a return threshold, the same for every run of an env and model kind:
    THRESHOLD_SHARE of the way from chance loss to the highest of the runs' lowest (smoothed)
    losses, and of the lowest of their highest in-training returns, so every run reaches both
    (None where some run learned nothing, or had no in-training evaluation)."""
    for kind in dict.fromkeys(cfg.model.kind for cfg, _ in runs):
        group = [m for cfg, m in runs if cfg.model.kind == kind]
        trailing = [trailing_mean(action_losses(m.get("history", []))) for m in group]
        returns = [[(r["step"], r["eval_normalised_return"]) for r in m.get("history", []) if "eval_normalised_return" in r]
                   for m in group]
        chance = group[0]["chance_loss"]
        reached = max((t.min() if len(t) else np.inf) for t in trailing)
        loss_threshold = chance - THRESHOLD_SHARE * (chance - reached) if reached < chance else None
        best = min((max(v for _, v in rs) if rs else 0.0) for rs in returns)
        return_threshold = THRESHOLD_SHARE * best if best > 0 else None
        for m, t, rs in zip(group, trailing, returns):
            steps = [r["step"] for r in loss_rows(m["history"])]
            m["loss_threshold"], m["return_threshold"] = loss_threshold, return_threshold
            m["steps_to_loss"] = steps[int(np.flatnonzero(t <= loss_threshold)[0])] if loss_threshold is not None else None
            m["steps_to_return"] = (next(s for s, v in rs if v >= return_threshold)
                                    if return_threshold is not None else None)


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    ds = open_collected(cfg.inputs.dataset, cfg)
    n_streams, steps = ds["actions"].shape
    m = cfg.model
    longest = m.context_len if m.kind == "ad" else m.max_compression_depth * m.chunk_len + m.recent_len
    if steps < longest:
        key = "model.context_len" if m.kind == "ad" else "model.recent_len"
        raise ConfigError(f"{key}: windows of {longest} transitions exceed the {steps} of each history")
    train_ids, val_ids = split_streams(n_streams, cfg.train.val_fraction, cfg.seed)
    if not len(train_ids):
        raise ConfigError(f"train.val_fraction: {cfg.train.val_fraction} leaves none of {n_streams} streams to train on")
    scale, align = cfg.env.size - 1, window_align(cfg)

    def batch(rng, size, part, step):
        return sample_windows(ds, train_ids, rng, size, window_length(cfg, rng), part, scale, align)

    def val_batch(rng, size, i):
        return sample_windows(ds, val_ids, rng, size, window_length(cfg, rng), slice(None), scale, align)

    def evaluate(model):
        policy = model.policy if isinstance(model, WithReconstruction) else model
        scores = in_context(policy, cfg, device(), cfg.train.eval_streams_per_task, controls=False)
        return {"eval_normalised_return": scores["final_normalised_return"]}

    torch.manual_seed(cfg.seed)
    policy = build_model(cfg)
    if cfg.inputs.pretrained_encoder_path:
        load_pretrained_encoder(policy, cfg, log)
    model, loss = policy, action_loss
    if cfg.train.reconstruction_weight > 0:
        model = WithReconstruction(policy, cfg.pretrain, OBS_DIM, N_ACTIONS)
        loss = with_reconstruction_loss(cfg.train.reconstruction_weight)
    log(f"{type(policy).__name__}: {sum(p.numel() for p in model.parameters()):,} parameters"
        + (f" (a reconstruction head, weight {cfg.train.reconstruction_weight})" if model is not policy else "")
        + f", {len(train_ids)} training streams x {steps} transitions; {describe_align(align)}")
    final = lambda m, step: {FINAL_MODEL: {"model_state_dict": policy.state_dict(),  # noqa: E731 (the policy alone)
                                           "global_step": step, "config": cfg.to_dict()}}
    result = fit(run_dir, cfg, Objective(model, loss, batch, decided_by(cfg), val_batch if len(val_ids) else None,
                                         final=final, evaluate=evaluate), log=log)
    result.update(learning_speed(result["history"]))
    result["flops_per_token"] = policy.flops_per_token()
    result["chance_loss"] = float(np.log(N_ACTIONS))
    return result
