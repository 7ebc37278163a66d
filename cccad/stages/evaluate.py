"""Stage `evaluate`: in-context evaluation on held-out tasks.

The trained model acts for many consecutive episodes with no weight updates; its context is
carried across episode boundaries (AD: the last context_len transitions; CompressedAD: latents of
the compressed past plus recent transitions), so any improvement from episode to episode is
learned in context. Batched over (held-out task, stream) pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cccad.config import Config, pick
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM, BatchedDarkroom, DarkroomTasks
from cccad.models.context import History, context_for
from cccad.models.policies import load_trained, require_trained, trained_by
from cccad.plots import line_plot
from cccad.runtime import device
from cccad.sections import Column, Curves, Section

NEEDS = ("train",)
INPUT_KEYS = {"train": ("inputs.train_run", ".")}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = False


REPORT = (Section(
    "In-context evaluation on held-out goals", "Return of the last in-context episode divided by the optimal "
    "return, averaged over held-out goals; mean ± 95% interval over seeds. No weight updates during evaluation.",
    (Column("final normalised return", lambda m: m["final_normalised_return"]),
     Column("final return", lambda m: m["final_return"], 2),
     Column("compressions per stream", lambda m: m["compressions"], 0)),
    plots=(Curves("in_context", "in-context learning on held-out goals ({env})", "episode", "return / optimal",
                  curve=lambda m: m["normalised_return_curve"], hline=1.0),)),)


def summary(m: dict) -> str:
    return (f"last in-context episode return / optimal = {m['final_normalised_return']:.3f}"
            + (f" ({m['compressions']} compressions)" if m.get("compressions") else ""))


def decided_by(cfg: Config) -> dict:
    return {**trained_by(cfg), **pick(cfg, "evaluate")}


def preflight(cfg: Config) -> None:
    require_trained(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / "in_context_return.png").is_file()


@torch.no_grad()
def rollout(model, cfg: Config, tasks: np.ndarray, seed: int, device) -> tuple[np.ndarray, int]:
    """(len(tasks), episodes) returns of consecutive in-context episodes, and the number of
    compressions performed per stream."""
    E, H = cfg.evaluate.episodes, cfg.env.horizon
    env = BatchedDarkroom(cfg.env, tasks)
    history = History(len(tasks), E * H, OBS_DIM, N_ACTIONS, cfg.env.size - 1, device)
    context = context_for(model, history)
    gen = torch.Generator().manual_seed(seed)
    returns = np.zeros((len(tasks), E))
    t = 0
    for e in range(E):
        obs = env.reset()
        for _ in range(H):
            history.states[:, t] = torch.from_numpy(obs)
            logits = context.logits(t).float().cpu()
            if cfg.evaluate.greedy:
                action = logits.argmax(-1)
            else:
                action = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            obs, reward, _ = env.step(action.numpy())
            history.actions[:, t], history.rewards[:, t] = action, torch.from_numpy(reward)
            history.next_states[:, t] = torch.from_numpy(obs)
            returns[:, e] += reward
            t += 1
    return returns, context.compressions


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    dev = device()
    model = load_trained(cfg, cfg.inputs.train_run, dev)
    family = DarkroomTasks(cfg.env)
    task_ids = np.repeat(family.test_ids, cfg.evaluate.streams_per_task)
    chunks = [task_ids[i:i + cfg.evaluate.batch_size] for i in range(0, len(task_ids), cfg.evaluate.batch_size)]
    results = [rollout(model, cfg, family.tasks[ids], cfg.seed * 7919 + i, dev) for i, ids in enumerate(chunks)]
    returns, compressions = np.concatenate([r for r, _ in results]), results[0][1]
    normalised = returns / np.maximum(family.optimal_return(task_ids), 1e-9)[:, None]
    curve, norm_curve = returns.mean(0), normalised.mean(0)
    line_plot(Path(run_dir) / "in_context_return.png", {"normalised return": norm_curve.tolist()},
              f"in-context learning on held-out tasks ({cfg.env.name})", "episode", "return / optimal", hline=1.0)
    log(f"held-out tasks: {len(family.test_ids)}, final episode return {curve[-1]:.2f}, "
        f"normalised {norm_curve[-1]:.3f}, {compressions} compressions per stream")
    return {"model": cfg.model.kind, "compressions": compressions,
            "context_transitions": cfg.evaluate.episodes * cfg.env.horizon, "n_test_tasks": int(len(family.test_ids)), "episodes": cfg.evaluate.episodes,
            "return_curve": curve.tolist(), "normalised_return_curve": norm_curve.tolist(),
            "final_return": float(curve[-1]), "final_normalised_return": float(norm_curve[-1]),
            "final_normalised_return_per_task": {int(t): float(v) for t, v in zip(
                family.test_ids, normalised[:, -1].reshape(len(family.test_ids), -1).mean(1))}}
