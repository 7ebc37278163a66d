"""In-context evaluation: a trained policy acts on held-out tasks for consecutive episodes with no
weight updates, its context carried across episode boundaries (cccad/models/context.py), so any
improvement from episode to episode is learned in context. Batched over (held-out task, stream)
pairs; scored as the return of each episode over the best achievable one.

Memory controls, beside the normal condition, show what the long context is worth:
- CompressedAD "no_latents": the recent transitions alone (as its depth-0 training windows);
- CompressedAD "foreign_latents": latents made from the same steps of a stream of another task
  (in the normal condition), so they carry another goal;
- AD "recent_only": its window cut to `model.recent_len` transitions.
"""
from __future__ import annotations

import numpy as np
import torch

from cccad.config import Config
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM, BatchedDarkroom, DarkroomTasks
from cccad.models.compressed_ad import CompressedAD
from cccad.models.context import History, context_for

CONTROLS = {"ad": ("recent_only",), "compressed_ad": ("no_latents", "foreign_latents")}


@torch.no_grad()
def rollout(model, cfg: Config, tasks: np.ndarray, seed: int, device, condition: str = "normal",
            source: History | None = None) -> tuple[np.ndarray, int, History]:
    """(len(tasks), episodes) returns of consecutive in-context episodes, the compressions per
    stream, and the history."""
    E, H = cfg.evaluate.episodes, cfg.env.horizon
    env = BatchedDarkroom(cfg.env, tasks)
    history = History(len(tasks), E * H, OBS_DIM, N_ACTIONS, cfg.env.size - 1, device)
    context = context_for(model, history, condition, source, cfg.evaluate.window_stride)
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
    return returns, context.compressions, history


def condition_scores(normalised: np.ndarray, task_ids: np.ndarray, test_ids: np.ndarray) -> dict:
    """A condition's scores from its (streams, episodes) normalised returns: the curve, the final
    episode's mean and its standard error over streams, and per task."""
    final = normalised[:, -1]
    return {"normalised_return_curve": normalised.mean(0).tolist(), "final_normalised_return": float(final.mean()),
            "final_normalised_return_se": float(final.std(ddof=1) / np.sqrt(len(final))) if len(final) > 1 else None,
            "final_normalised_return_per_task": {int(t): float(final[task_ids == t].mean()) for t in test_ids}}


def evaluate(model, cfg: Config, device, streams_per_task: int, controls: bool = True) -> dict:
    """The normal condition's returns and scores (and each memory control's, under "controls")."""
    family = DarkroomTasks(cfg.env)
    task_ids = np.repeat(family.test_ids, streams_per_task)
    optimal = np.maximum(family.optimal_return(task_ids), 1e-9)[:, None]
    size = cfg.evaluate.batch_size
    chunks = [np.arange(i, min(i + size, len(task_ids))) for i in range(0, len(task_ids), size)]
    runs = [rollout(model, cfg, family.tasks[task_ids[ids]], cfg.seed * 7919 + i, device) for i, ids in enumerate(chunks)]
    returns = np.concatenate([r for r, _, _ in runs])
    out = {"returns": returns, "compressions": runs[0][1],
           **condition_scores(returns / optimal, task_ids, family.test_ids)}
    if not controls:
        return out
    # the foreign latents of stream s: those of the normal condition's stream s + streams_per_task,
    # which played another task
    everyone = concat([history for _, _, history in runs])
    other = (np.arange(len(task_ids)) + streams_per_task) % len(task_ids)
    kind = "compressed_ad" if isinstance(model, CompressedAD) else "ad"
    out["controls"] = {}
    for condition in CONTROLS[kind]:
        control = [rollout(model, cfg, family.tasks[task_ids[ids]], cfg.seed * 7919 + i, device, condition,
                           everyone.select(other[ids]) if condition == "foreign_latents" else None)[0]
                   for i, ids in enumerate(chunks)]
        out["controls"][condition] = condition_scores(np.concatenate(control) / optimal, task_ids, family.test_ids)
    return out


def concat(histories: list[History]) -> History:
    """Histories of the same length, their streams one after another."""
    out = histories[0].select(slice(None))
    for name in ("states", "actions", "rewards", "next_states"):
        setattr(out, name, torch.cat([getattr(h, name) for h in histories]))
    return out
