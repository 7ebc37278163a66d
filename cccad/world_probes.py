"""What the world-model stages share beyond their data (cccad/data/transitions.py) and nets
(cccad/models/world_model.py): the config that decides their runs, their inputs checked before any
work, held-out scoring of next-frame decoders, and the reward probe, on the true or the predicted
next latent (stages train_reward_predictor and train_dynamics_reward_predictor); and how the
report and the command line show them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cccad.config import Config, ConfigError, pick
from cccad.data.collected import dataset_config, require_dataset
from cccad.data.transitions import Transitions, draw, open_transitions
from cccad.models.world_model import WEIGHTS, RewardPredictor, as_frames, load_frozen, next_frame, trained_run
from cccad.plots import bar_plot, frame_grid
from cccad.runtime import device
from cccad.sections import Bars, Column, RunImage, Section
from cccad.trainer import Objective, fit, to_device

DECODED_FRAMES = "decoded_frames.png"  # a decoder stage's grid of real and decoded next frames
REWARD_PLOT = "reward_mse.png"


def trained_by(cfg: Config, *extra: str, drop: tuple[str, ...] = ()) -> dict:
    """What decides a world-model run: the data, the nets and the training settings (plus `extra`
    sections, e.g. probe; less the dotted keys in `drop`)."""
    return {**dataset_config(cfg), **pick(cfg, "train", "world_model", *extra, drop=drop)}


def require_inputs(cfg: Config, *encoders: str) -> None:
    """Before any work: the dataset, and each trained encoder's run (a key of WEIGHTS), fit this config."""
    require_dataset(cfg)
    for name in encoders:
        run = trained_run(cfg, name)
        if not (run / WEIGHTS[name]).is_file():
            raise ConfigError(f"inputs.{name}_run: no {WEIGHTS[name]} in {getattr(cfg.inputs, f'{name}_run') or '(not set)'}")
        load_frozen(cfg, name)


@torch.no_grad()
def in_chunks(fn, samples: dict, dev, chunk: int = 256) -> list:
    """fn(batch) over `samples` in batches of `chunk` on `dev`: the outputs, in order."""
    n = len(samples["state"])
    return [fn(to_device({k: v[i:i + chunk] if torch.is_tensor(v) else v for k, v in samples.items()}, dev))
            for i in range(0, n, chunk)]


def decoder_scores(cfg: Config, data: Transitions, decode) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Held-out L1 of `decode(batch)`'s next frames (clamped to [0, 1]) beside two floors, the mean
    training frame and copying the current frame (the newest of state), over all pixels and over
    the pixels that change between the two frames (where a copy is all error); the change skill,
    1 - decoder / copy on those pixels (copying scores 0, a perfect decoder 1). Also the decoded
    and the real next frames. Every decoder of a seed is scored on the same transitions."""
    samples = data.scoring_set(cfg.seed, cfg.probe.val_samples)
    target, c = next_frame(samples), samples["frame_channels"]
    decoded = torch.cat([as_frames(out).cpu() for out in in_chunks(decode, samples, device())])
    current = samples["state"][:, -c:].float() / 255.0
    mean = data.mean_frame(cfg.seed).expand_as(target)
    changed = current != target
    scores = {"decoder_l1": float(F.l1_loss(decoded, target)), "mean_frame_l1": float(F.l1_loss(mean, target)),
              "copy_frame_l1": float(F.l1_loss(current, target)), "changed_pixel_share": float(changed.float().mean()),
              "val_samples": len(decoded)}
    if changed.any():
        on_changed = {k: float((guess - target).abs()[changed].mean())
                      for k, guess in (("decoder", decoded), ("mean_frame", mean), ("copy_frame", current))}
        scores.update({f"{k}_changed_l1": v for k, v in on_changed.items()},
                      change_skill=1.0 - on_changed["decoder"] / on_changed["copy_frame"])
    return scores, decoded, target


def score_decoder(cfg: Config, data: Transitions, decode, run_dir: Path, name: str, log=print) -> dict:
    """`decoder_scores`, logged, and a PNG of real vs decoded frames."""
    scores, decoded, target = decoder_scores(cfg, data, decode)
    n = min(8, len(decoded))
    frame_grid(Path(run_dir) / DECODED_FRAMES, {"real next frame": target[:n].numpy(), name: decoded[:n].numpy()},
               f"{name}: held-out next frames (L1 {scores['decoder_l1']:.4f})")
    log(f"{name}: {decoding_summary(scores)} on {len(decoded)} transitions")
    return scores


def decoding_section(model: str) -> Section:
    """The report's table of next-frame decoders (both decoder stages' rows: `model` names one)."""
    return Section(
        "Next-frame decoding", "Mean absolute error (pixels in [0, 1]) of the decoded next frame on held-out "
        "transitions, against two floors: copying the current frame, and the mean frame; over all pixels and over "
        "the pixels that change between the frames. Change skill: 1 - decoder / copy on the changed pixels (copying "
        "scores 0, a perfect decoder 1, below 0 is worse than copying).",
        (Column("decoder L1", lambda m: m["decoder_l1"], 4), Column("copy-frame L1", lambda m: m["copy_frame_l1"], 4),
         Column("mean-frame L1", lambda m: m["mean_frame_l1"], 4),
         Column("changed: decoder L1", lambda m: m.get("decoder_changed_l1"), 4),
         Column("changed: copy L1", lambda m: m.get("copy_frame_changed_l1"), 4),
         Column("changed: mean-frame L1", lambda m: m.get("mean_frame_changed_l1"), 4),
         Column("change skill", lambda m: m.get("change_skill"), 3),
         Column("changed pixels", lambda m: m.get("changed_pixel_share"), 4)), labels=("env", "model"), row=model,
        plots=(Bars("decoder_probe", "held-out next-frame L1", "L1", values=lambda m: {"": m["decoder_l1"]},
                    floor=lambda m: m["copy_frame_l1"], floor_label="copy current frame"),
               Bars("decoder_change_skill", "held-out change skill (1 - decoder / copy L1 on changed pixels)",
                    "change skill", values=lambda m: {"": m.get("change_skill")}, floor=lambda m: 0.0,
                    floor_label="copy current frame"),
               RunImage(DECODED_FRAMES, f"real and decoded next frames, {model}")))


# what the JEPA's decoder probe and the encoder-decoder's own decoder are compared by, per seed
DECODING_COMPARED = (Column("decoder L1", lambda m: m["decoder_l1"], 4),
                     Column("changed: decoder L1", lambda m: m.get("decoder_changed_l1"), 4),
                     Column("change skill", lambda m: m.get("change_skill"), 3))


def decoding_against_encoder_decoder() -> Section:
    """The report's paired differences, per seed within a JEPA decoder probe's run: its scores less
    the encoder-decoder's (scored by the probe on the same held-out transitions)."""
    def differences(m: dict) -> dict:
        ed = m.get("encoder_decoder")
        if not ed:
            return {}
        return {("JEPA decoder probe - encoder-decoder",): {k: m[k] - ed[k] for k in
                                                            ("decoder_l1", "decoder_changed_l1", "change_skill")
                                                            if m.get(k) is not None and ed.get(k) is not None}}
    return Section(
        "Next-frame decoding: JEPA against the encoder-decoder", "Per seed, on the same held-out transitions, the "
        "decoder probe on the frozen JEPA's predicted latent less the encoder-decoder's own decoder (negative L1 "
        "and positive change skill favour the JEPA); mean ± 95% interval over seeds.",
        DECODING_COMPARED, labels=("env", "difference"), views=differences)


def decoding_summary(m: dict) -> str:
    changed = (f"; on changed pixels ({m['changed_pixel_share']:.2%}) {m['decoder_changed_l1']:.4f} against copy "
               f"{m['copy_frame_changed_l1']:.4f}: change skill {m['change_skill']:.3f}") if "change_skill" in m else ""
    return (f"held-out next-frame L1 {m['decoder_l1']:.4f} (mean frame {m['mean_frame_l1']:.4f}, copy current "
            f"frame {m['copy_frame_l1']:.4f}){changed}")


def detection(score: torch.Tensor, event: torch.Tensor) -> dict:
    """How well `score` picks out the transitions where `event` holds: ROC AUC (the chance that an
    event scores above a non-event, ties half; 0.5 is chance) and average precision (the precision
    at each event's rank, ties in data order, averaged; chance is the events' share). None without both kinds."""
    score, event = score.double().numpy(), event.numpy().astype(bool)
    n_pos, n_neg = int(event.sum()), int((~event).sum())
    if not n_pos or not n_neg:
        return {"auc": None, "average_precision": None}
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
    auc = (ranks[event].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(event[order])
    precision_at_hits = hits[event[order]] / (np.flatnonzero(event[order]) + 1)
    return {"auc": float(auc), "average_precision": float(precision_at_hits.mean())}


# ----------------------------------------------------------------------------- reward probe

def reward_folder(dynamics: bool) -> str:
    """Where each encoder's head is saved: weights/<encoder>/<folder>/model.pt."""
    return "dynamics_reward_predictor" if dynamics else "reward_predictor"


def next_latent(dynamics: bool) -> str:
    """How a reward probe gets z_{t+1}: the encoder's latent of the real next state, or the predictor's."""
    return "predicted" if dynamics else "true"


# a reward head's held-out scores, as the report shows them (its table, and JEPA less encoder-decoder)
REWARD_MSE = Column("reward MSE", lambda m: m.get("reward_mse"), 4)
MSE_REWARDED = Column("MSE rewarded", lambda m: m.get("reward_mse_on_rewarded"), 3)
MSE_UNREWARDED = Column("MSE unrewarded", lambda m: m.get("reward_mse_on_unrewarded"), 4)
DETECTION = (Column("reward AUC", lambda m: m.get("auc"), 3),
             Column("average precision", lambda m: m.get("average_precision"), 3))


def reward_section(dynamics: bool) -> Section:
    """The report's table of reward probes: a row per encoder and next latent (true or predicted)."""
    kind = next_latent(dynamics)
    return Section(
        "Reward probes", "The reward predicted from frozen latents (z_t and the true or the predicted z_{t+1}) on "
        "held-out transitions. MSE overall, on the rewarded (reward > 0) and on the unrewarded transitions, each "
        "beside its floor: always predicting the mean training reward. As a detector of reward events (reward > 0) "
        "by the predicted reward: ROC AUC (chance 0.5) and average precision (chance: the rewarded share).",
        (REWARD_MSE, Column("mean-reward floor", lambda m: m["mean_reward_mse"], 4),
         MSE_REWARDED, Column("floor rewarded", lambda m: m.get("mean_reward_mse_on_rewarded"), 3),
         MSE_UNREWARDED, Column("floor unrewarded", lambda m: m.get("mean_reward_mse_on_unrewarded"), 4),
         *DETECTION, Column("rewarded share", lambda m: m.get("val_rewarded_share"), 4),
         Column("rewarded held-out transitions", lambda m: m.get("val_rewarded"), 0)),
        labels=("env", "encoder", "next latent"),
        views=lambda m: {(enc, kind): {**m, **s} for enc, s in m["per_encoder"].items()},
        plots=(Bars("reward_probe", "held-out reward MSE", "MSE", values=lambda m: {"": m.get("reward_mse")},
                    floor=lambda m: m["mean_reward_mse"], floor_label="mean-reward floor"),
               Bars("reward_auc", "held-out reward-event detection (ROC AUC)", "AUC", values=lambda m: {"": m.get("auc")},
                    floor=lambda m: 0.5, floor_label="chance")))


def jepa_against_encoder_decoder(dynamics: bool) -> Section:
    """The report's paired differences, per seed within a run: the JEPA's head less the
    encoder-decoder's, on the same held-out transitions."""
    kind = next_latent(dynamics)

    def differences(m: dict) -> dict:
        jepa, ed = m["per_encoder"].get("jepa"), m["per_encoder"].get("encoder_decoder")
        if not (jepa and ed):
            return {}
        return {("JEPA - encoder-decoder", kind): {k: jepa[k] - ed[k] for k in jepa
                                                  if jepa[k] is not None and ed.get(k) is not None}}
    return Section(
        "Reward probes: JEPA against the encoder-decoder", "Per seed, on the same held-out transitions, the JEPA "
        "latents' reward head less the encoder-decoder latents' (negative MSE and positive AUC favour the JEPA); "
        "mean ± 95% interval over seeds.",
        (REWARD_MSE, MSE_REWARDED, MSE_UNREWARDED, *DETECTION),
        labels=("env", "difference", "next latent"), views=differences)


# what a study's comparisons between JEPA variants compare, of both reward probes
REWARD_COMPARED = (Column("JEPA reward MSE", lambda m: m["per_encoder"]["jepa"]["reward_mse"], 4),
                   Column("JEPA reward AUC", lambda m: m["per_encoder"]["jepa"]["auc"]))


def reward_report(dynamics: bool) -> tuple[Section, ...]:
    return reward_section(dynamics), jepa_against_encoder_decoder(dynamics)


def reward_summary(m: dict) -> str:
    auc = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return ("held-out reward MSE " + ", ".join(f"{k} {v['reward_mse']:.4f} (AUC {auc(v.get('auc'))})"
                                              for k, v in m["per_encoder"].items())
            + f" (mean-reward floor {m['mean_reward_mse']:.4f}, AUC chance 0.5)")


def reward_probe_decided_by(cfg: Config, dynamics: bool) -> dict:
    return {**trained_by(cfg, "probe"), "next_latent": next_latent(dynamics)}


def reward_probe_valid(run_dir: Path, dynamics: bool) -> bool:
    return all((Path(run_dir) / "weights" / name / reward_folder(dynamics) / "model.pt").is_file()
               for name in WEIGHTS) and (Path(run_dir) / REWARD_PLOT).is_file()


def reward_objective(cfg: Config, data: Transitions, dynamics: bool):
    """The reward probes' Objective (a head per encoder, encoders and predictors frozen), their
    latent_batch(batch) -> the heads' inputs (the reward, and per encoder z_t and z_{t+1}), and
    the training reward's mean and scale (heads learn the standardised reward). z_{t+1} is the
    encoder's latent of the real next state, or (dynamics) the predictor's guess from (z_t, a_t).
    The nets are frozen, so every training transition's inputs are computed once, at the first
    batch, and each step draws its batch's transitions (as data.train_batch draws them) from those."""
    frozen = nn.ModuleDict({name: load_frozen(cfg, name) for name in WEIGHTS})
    train_rewards = data.rewards[data.train_ids]
    mean, scale = float(train_rewards.mean()), float(train_rewards.std()) or 1.0
    torch.manual_seed(cfg.seed)
    heads = nn.ModuleDict({name: RewardPredictor(cfg.world_model) for name in WEIGHTS})

    @torch.no_grad()
    def latent_batch(batch):
        out = {"reward": batch["reward"]}
        for name, nets in frozen.items():
            z = nets.encoder(batch["state"])
            out[f"z/{name}"] = z
            out[f"z_next/{name}"] = nets.predictor(z, batch["action"]) if dynamics else nets.encoder(batch["next_state"])
        return out

    cache: dict[str, torch.Tensor] = {}

    def train_batch(rng, size, part, step):
        if not cache:  # by the first batch the training loop has put the frozen nets on its device
            dev, ids = next(frozen.parameters()).device, data.train_ids
            chunks = [latent_batch(to_device(data.batch(ids[i:i + 256]), dev)) for i in range(0, len(ids), 256)]
            cache.update({k: torch.cat([c[k] for c in chunks]) for k in chunks[0]})
        pick = torch.from_numpy(draw(len(data.train_ids), rng, size, part)).to(cache["reward"].device)
        return {k: v[pick] for k, v in cache.items()}

    def loss(model, batch):
        target = (batch["reward"].float() - mean) / scale
        total, stats = 0.0, {}
        for name in WEIGHTS:
            err = F.mse_loss(model[name](batch[f"z/{name}"], batch[f"z_next/{name}"]).float(), target)
            total, stats[f"mse_{name}"] = total + err, err.detach()
        return total, stats

    def final(m, step):
        return {f"weights/{name}/{reward_folder(dynamics)}/model.pt": {
            "reward_predictor_state_dict": m[name].state_dict(), "reward_mean": mean, "reward_scale": scale,
            "global_step": step, "config": cfg.to_dict()} for name in WEIGHTS}

    obj = Objective(heads, loss, train_batch, reward_probe_decided_by(cfg, dynamics), tag="probe", final=final,
                    frozen=frozen)
    return obj, latent_batch, mean, scale


def run_reward_probe(cfg: Config, run_dir: Path, log, dynamics: bool) -> dict:
    """Train the reward heads, then score them on the held-out transitions in reward units:
    MSE overall, on the rewarded (reward > 0) and on the unrewarded ones, each beside the floor of
    always predicting the mean training reward; and the predicted reward as a detector of reward
    events (AUC, average precision)."""
    data = open_transitions(cfg)
    obj, latent_batch, mean, scale = reward_objective(cfg, data, dynamics)
    heads = obj.model
    kind = next_latent(dynamics)
    log(f"reward probes on frozen encoder-decoder and JEPA latents, {kind} next latent; "
        f"training reward mean {mean:.3f}, std {scale:.3f}")
    result = fit(run_dir, cfg.for_probe(), obj, log=log)

    samples = data.scoring_set(cfg.seed, cfg.probe.val_samples)
    heads.eval()
    def predict(batch):
        inputs = latent_batch(batch)
        return {name: heads[name](inputs[f"z/{name}"], inputs[f"z_next/{name}"]).float().cpu() * scale + mean
                for name in WEIGHTS}
    outputs = in_chunks(predict, samples, device())
    predicted = {name: torch.cat([out[name] for out in outputs]) for name in WEIGHTS}
    reward = samples["reward"].float()
    rewarded = reward > 0
    subsets = {"": torch.ones_like(rewarded), "_on_rewarded": rewarded, "_on_unrewarded": ~rewarded}

    def mse(p, subset):
        return float(F.mse_loss(p[subset], reward[subset])) if subset.any() else None

    constant = torch.full_like(reward, mean)
    floors = {f"mean_reward_mse{k}": mse(constant, subset) for k, subset in subsets.items()}
    scores = {name: {**{f"reward_mse{k}": mse(p, subset) for k, subset in subsets.items()}, **detection(p, rewarded)}
              for name, p in predicted.items()}
    bar_plot(Path(run_dir) / REWARD_PLOT, {name: s["reward_mse"] for name, s in scores.items()},
             f"reward probe, {kind} next latent (held-out)", "MSE", hline=floors["mean_reward_mse"],
             hline_label="mean-reward floor")
    result = {**result, "next_latent": kind, "per_encoder": scores, **floors, "val_samples": len(reward),
              "val_rewarded": int(rewarded.sum()), "val_rewarded_share": float(rewarded.float().mean()),
              "reward_mean": mean, "reward_scale": scale, "val_reward_mean": float(np.mean(reward.numpy()))}
    log(f"reward probe ({kind} next latent), {reward_summary(result)}, on {len(reward)} transitions "
        f"({int(rewarded.sum())} rewarded)")
    return result
