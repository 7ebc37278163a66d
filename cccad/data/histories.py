"""Learning histories for Algorithm Distillation: a source RL algorithm learns every training task
from scratch while every transition of its whole learning history is recorded.

Layout (one dataset, stream-major): `states`/`next_states` (S, T, 2) uint8, `actions` (S, T) uint8,
`rewards` (S, T) float32, `task_ids` (S,) int32, `episode_returns` (S, E) float32; S streams of
T = episodes x horizon transitions.

Two sources:
- `qlearning_histories`: tabular Q-learning with optimistic values, decaying epsilon and an
  optional backward replay of each episode, batched over all (task, stream) pairs: one numpy
  operation steps them all.
- `sb3_ppo_histories`: stable-baselines3 PPO, one task and stream at a time (slow; for fidelity
  with published setups).
"""
from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch

from cccad.config import Config
from cccad.data.store import DatasetWriter
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM, BatchedDarkroom, DarkroomEnv, DarkroomTasks
from cccad.models.ad import token_features


def allocate(writer: DatasetWriter, n_streams: int, episodes: int, horizon: int) -> dict:
    steps = episodes * horizon
    return {
        "states": writer.create("states", (n_streams, steps, OBS_DIM), np.uint8),
        "actions": writer.create("actions", (n_streams, steps), np.uint8),
        "rewards": writer.create("rewards", (n_streams, steps), np.float32),
        "next_states": writer.create("next_states", (n_streams, steps, OBS_DIM), np.uint8),
        "task_ids": writer.create("task_ids", (n_streams,), np.int32),
        "episode_returns": writer.create("episode_returns", (n_streams, episodes), np.float32),
    }


def stream_tasks(tasks: DarkroomTasks, streams_per_task: int) -> np.ndarray:
    return np.repeat(tasks.train_ids, streams_per_task).astype(np.int32)


def qlearning_histories(cfg: Config, tasks: DarkroomTasks, out: dict, progress=None) -> None:
    c, horizon = cfg.collect, cfg.env.horizon
    rng = np.random.default_rng(cfg.seed)
    task_ids = stream_tasks(tasks, c.streams_per_task)
    out["task_ids"][:] = task_ids
    env = BatchedDarkroom(cfg.env, tasks.tasks[task_ids])
    n = env.n
    rows = np.arange(n)
    q = np.full((n, env.n_tabular_states, N_ACTIONS), c.q_init, dtype=np.float32)
    decay_episodes = max(1, int(c.eps_decay_fraction * c.episodes))

    def update(s, a, r, s_next):
        # the horizon is a time limit, not a terminal state: always bootstrap
        target = r + c.gamma * q[rows, s_next].max(1)
        q[rows, s, a] += c.q_lr * (target - q[rows, s, a])

    ep = {k: np.zeros((n, horizon) + s, dtype) for k, s, dtype in
          [("states", (OBS_DIM,), np.uint8), ("actions", (), np.uint8), ("rewards", (), np.float32),
           ("next_states", (OBS_DIM,), np.uint8)]}
    ep_s = np.zeros((n, horizon + 1), dtype=np.int64)  # tabular states visited this episode
    for e in range(c.episodes):
        eps = c.eps_start + (c.eps_end - c.eps_start) * min(1.0, e / decay_episodes)
        obs = env.reset()
        ep_s[:, 0] = env.tabular_state()
        for t in range(horizon):
            s = ep_s[:, t]
            q_s = q[rows, s]
            greedy = np.argmax(q_s + rng.random(q_s.shape, dtype=np.float32) * 1e-4, axis=1)  # random tie-break
            explore = rng.random(n) < eps
            action = np.where(explore, rng.integers(0, N_ACTIONS, n), greedy)
            next_obs, reward, _ = env.step(action)
            ep_s[:, t + 1] = env.tabular_state()
            update(s, action, reward, ep_s[:, t + 1])
            ep["states"][:, t], ep["actions"][:, t], ep["rewards"][:, t] = obs, action, reward
            ep["next_states"][:, t] = next_obs
            obs = next_obs
        if c.backward_replay:  # replay the episode backwards: one episode propagates a found reward to the start
            for t in reversed(range(horizon)):
                update(ep_s[:, t], ep["actions"][:, t], ep["rewards"][:, t], ep_s[:, t + 1])
        window = slice(e * horizon, (e + 1) * horizon)
        for k, v in ep.items():
            out[k][:, window] = v
        out["episode_returns"][:, e] = ep["rewards"].sum(1)
        if progress:
            progress(e + 1, c.episodes)


class RecordingWrapper(gym.Wrapper):
    """Records the transitions an SB3 learner makes in one env into row `row`, up to `steps`."""

    def __init__(self, env: DarkroomEnv, out: dict, row: int, steps: int):
        super().__init__(env)
        self.out, self.row, self.steps, self.t, self.obs = out, row, steps, 0, None

    def reset(self, **kwargs):
        self.obs, info = self.env.reset(**kwargs)
        return self.obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.t < self.steps:
            o, r, t = self.out, self.row, self.t
            o["states"][r, t], o["actions"][r, t], o["rewards"][r, t] = self.obs, int(action), reward
            o["next_states"][r, t] = obs
            self.t += 1
        self.obs = obs
        return obs, reward, terminated, truncated, info


def sb3_ppo_histories(cfg: Config, tasks: DarkroomTasks, out: dict, progress=None) -> None:
    from stable_baselines3 import PPO  # slow import, only for this source

    c, horizon = cfg.collect, cfg.env.horizon
    steps = c.episodes * horizon
    task_ids = stream_tasks(tasks, c.streams_per_task)
    out["task_ids"][:] = task_ids
    torch.set_num_threads(1)  # tiny MLPs: threads only add overhead
    for row, task_id in enumerate(task_ids):
        env = RecordingWrapper(DarkroomEnv(cfg.env, tasks.tasks[task_id]), out, row, steps)
        agent = PPO("MlpPolicy", env, n_steps=c.ppo_n_steps, batch_size=c.ppo_batch_size,
                    learning_rate=c.ppo_lr, seed=cfg.seed * 100003 + row, device="cpu", verbose=0)
        agent.learn(total_timesteps=steps)
        out["episode_returns"][row] = np.asarray(out["rewards"][row]).reshape(c.episodes, horizon).sum(1)
        if progress:
            progress(row + 1, len(task_ids))


SOURCES = {"qlearning": qlearning_histories, "sb3_ppo": sb3_ppo_histories}


def collect_histories(cfg: Config, writer: DatasetWriter, progress=None) -> dict:
    """Run the configured source into `writer`'s arrays; returns timing and the return curve."""
    tasks = DarkroomTasks(cfg.env)
    n_streams = len(tasks.train_ids) * cfg.collect.streams_per_task
    out = allocate(writer, n_streams, cfg.collect.episodes, cfg.env.horizon)
    start = time.perf_counter()
    SOURCES[cfg.collect.source](cfg, tasks, out, progress)
    seconds = time.perf_counter() - start
    returns = np.asarray(out["episode_returns"])
    optimal = tasks.optimal_return(np.asarray(out["task_ids"]))
    normalised = returns / np.maximum(optimal, 1e-9)[:, None]
    return {"transitions": int(n_streams * cfg.collect.episodes * cfg.env.horizon), "seconds": seconds,
            "transitions_per_s": n_streams * cfg.collect.episodes * cfg.env.horizon / max(seconds, 1e-9),
            "return_curve": returns.mean(0).tolist(), "normalised_return_curve": normalised.mean(0).tolist(),
            "n_streams": n_streams}


def history_windows(ds, streams: np.ndarray, starts: np.ndarray, K: int, n_actions: int, scale: float) -> dict:
    """Training windows: K tokens from each (stream, start); token j pairs transition start+j-1
    with query state start+j and is trained to predict action start+j."""
    t = starts[:, None] + np.arange(K)  # (B, K) query times
    prev = np.maximum(t - 1, 0)  # token 0's previous transition is masked out
    rows = streams[:, None]
    tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    feats = token_features(tensor(ds["states"][rows, prev]), tensor(ds["actions"][rows, prev]),
                           tensor(ds["rewards"][rows, prev]), tensor(ds["next_states"][rows, prev]),
                           tensor(ds["states"][rows, t]), n_actions, scale)
    return {"features": feats, "actions": tensor(ds["actions"][rows, t]).long()}


def split_streams(n_streams: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) stream indices: a fixed share of whole streams is held out."""
    order = np.random.default_rng([seed, 1]).permutation(n_streams)
    n_val = int(round(val_fraction * n_streams))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def window_align(cfg: Config, kind: str | None = None) -> int:
    """Where the windows of a model `kind` (default: cfg.model.kind) may start: any step, or
    (train.align_to_episodes, CompressedAD) an episode's first. Never aligned for AD: its in-context
    window slides one step at a time, so it acts on windows that start anywhere (trained on aligned
    ones only, it stayed near 0.3 on Darkroom where it reaches 0.9)."""
    return cfg.env.horizon if cfg.train.align_to_episodes and (kind or cfg.model.kind) == "compressed_ad" else 1


def describe_align(align: int) -> str:
    return f"windows start at an episode's first step (every {align})" if align > 1 else "windows start at any step"


def sample_windows(ds, ids: np.ndarray, rng: np.random.Generator, size: int, length: int, part: slice,
                   scale: float, align: int = 1) -> dict:
    """`size` random windows of `length` tokens from the streams `ids`, starting at multiples of
    `align`; loads only `part` of them (the indices are drawn for all, so every process draws the
    same global batch)."""
    steps = ds["actions"].shape[1]
    streams = ids[rng.integers(0, len(ids), size)]
    starts = rng.integers(0, (steps - length) // align + 1, size) * align
    windows = history_windows(ds, streams[part], starts[part], length, N_ACTIONS, scale)
    return {**windows, "streams": torch.from_numpy(streams[part])}
