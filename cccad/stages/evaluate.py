"""Stage `evaluate`: in-context evaluation on held-out tasks.

The trained model acts for many consecutive episodes with no weight updates; its context (the
last `context_len` transitions) is carried across episode boundaries, so any improvement from
episode to episode is learned in context. Batched over (held-out task, stream) pairs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cccad.config import Config, ConfigError
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM, BatchedDarkroom, DarkroomTasks
from cccad.models.ad import token_features
from cccad.plots import line_plot
from cccad.stages.train import build_model
from cccad.trainer import FINAL_MODEL, CheckpointError, load_checkpoint

NEEDS = ("train",)
INPUT_KEYS = {"train": ("evaluate.checkpoint", ".")}
PER_VARIANT = True


def preflight(cfg: Config) -> None:
    if not cfg.evaluate.checkpoint:
        raise ConfigError("evaluate.checkpoint: not set (a train run folder)")
    if not (Path(cfg.evaluate.checkpoint) / FINAL_MODEL).is_file():
        raise ConfigError(f"evaluate.checkpoint: no {FINAL_MODEL} in {cfg.evaluate.checkpoint}")


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / "in_context_return.png").is_file()


def load_model(cfg: Config, device) -> torch.nn.Module:
    path = Path(cfg.evaluate.checkpoint) / FINAL_MODEL
    state = load_checkpoint(path, ("model_state_dict", "global_step", "config"))
    own_cfg = cfg.to_dict()
    for section in ("env", "model"):  # same tasks (so the same held-out split) and same network
        for key, value in own_cfg[section].items():
            if state["config"].get(section, {}).get(key) != value:
                raise CheckpointError(f"{path}: trained with {section}.{key}="
                                      f"{state['config'].get(section, {}).get(key)!r}, this config has {value!r}")
    model = build_model(cfg)
    own = model.state_dict()
    for name, tensor in state["model_state_dict"].items():
        if name not in own:
            raise CheckpointError(f"{path}: tensor '{name}' is not in this model (model config differs)")
        if own[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                                  f"this model needs {tuple(own[name].shape)}")
    missing = sorted(set(own) - set(state["model_state_dict"]))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks tensor '{missing[0]}'")
    model.load_state_dict(state["model_state_dict"])
    return model.to(device).eval()


@torch.no_grad()
def rollout(model, cfg: Config, tasks: np.ndarray, seed: int, device) -> np.ndarray:
    """Returns (len(tasks), episodes) returns of consecutive in-context episodes."""
    E, H, K = cfg.evaluate.episodes, cfg.env.horizon, model.cfg.context_len
    n, steps, scale = len(tasks), E * H, cfg.env.size - 1
    env = BatchedDarkroom(cfg.env, tasks)
    states = torch.zeros(n, steps + 1, OBS_DIM, dtype=torch.long)
    actions = torch.zeros(n, steps, dtype=torch.long)
    rewards = torch.zeros(n, steps)
    next_states = torch.zeros(n, steps, OBS_DIM, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    returns = np.zeros((n, E))
    t = 0
    for e in range(E):
        obs = env.reset()
        for _ in range(H):
            states[:, t] = torch.from_numpy(obs)
            lo = max(0, t - K + 1)
            prev = (torch.arange(lo, t + 1) - 1).clamp(min=0)
            feats = token_features(states[:, prev], actions[:, prev], rewards[:, prev], next_states[:, prev],
                                   states[:, lo:t + 1], N_ACTIONS, scale).to(device)
            logits = model(feats)[:, -1].float().cpu()
            if cfg.evaluate.greedy:
                action = logits.argmax(-1)
            else:
                action = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            obs, reward, _ = env.step(action.numpy())
            actions[:, t], rewards[:, t] = action, torch.from_numpy(reward)
            next_states[:, t] = torch.from_numpy(obs)
            returns[:, e] += reward
            t += 1
    return returns


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg, device)
    family = DarkroomTasks(cfg.env)
    task_ids = np.repeat(family.test_ids, cfg.evaluate.streams_per_task)
    chunks = [task_ids[i:i + cfg.evaluate.batch_size] for i in range(0, len(task_ids), cfg.evaluate.batch_size)]
    returns = np.concatenate([rollout(model, cfg, family.tasks[ids], cfg.seed * 7919 + i, device)
                              for i, ids in enumerate(chunks)])
    normalised = returns / np.maximum(family.optimal_return(task_ids), 1e-9)[:, None]
    curve, norm_curve = returns.mean(0), normalised.mean(0)
    line_plot(Path(run_dir) / "in_context_return.png", {"normalised return": norm_curve.tolist()},
              f"in-context learning on held-out tasks ({cfg.env.name})", "episode", "return / optimal", hline=1.0)
    log(f"held-out tasks: {len(family.test_ids)}, final episode return {curve[-1]:.2f}, "
        f"normalised {norm_curve[-1]:.3f}")
    return {"n_test_tasks": int(len(family.test_ids)), "episodes": cfg.evaluate.episodes,
            "return_curve": curve.tolist(), "normalised_return_curve": norm_curve.tolist(),
            "final_return": float(curve[-1]), "final_normalised_return": float(norm_curve[-1]),
            "final_normalised_return_per_task": {int(t): float(v) for t, v in zip(
                family.test_ids, normalised[:, -1].reshape(len(family.test_ids), -1).mean(1))}}
