"""Darkroom family (AD paper): the agent sees only its own (x, y); the task is hidden.

- darkroom: reward 1 on every step spent on the goal cell.
- darkroom_hard: reward 1 only the first time the goal is reached in an episode.
- dark_key_to_door: reward 1 for reaching the key, then 1 for reaching the door with the key.

Two implementations with one behaviour: `BatchedDarkroom` steps many (task, stream) pairs in one
numpy operation (collection and evaluation use it); `DarkroomEnv` is a plain gymnasium Env written
independently, so a test can check that they agree step for step.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from cccad.config import EnvConfig

N_ACTIONS = 5  # up, down, left, right, no-op
MOVES = np.array([[0, 1], [0, -1], [-1, 0], [1, 0], [0, 0]], dtype=np.int64)
OBS_DIM = 2


class DarkroomTasks:
    """The task set of one env config and its fixed-seed train/test split."""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        cells = np.array([(x, y) for x in range(cfg.size) for y in range(cfg.size)], dtype=np.int64)
        if cfg.name == "dark_key_to_door":
            key, door = np.meshgrid(np.arange(len(cells)), np.arange(len(cells)), indexing="ij")
            keep = key.ravel() != door.ravel()
            self.tasks = np.concatenate([cells[key.ravel()[keep]], cells[door.ravel()[keep]]], axis=1)
        else:
            self.tasks = cells
        rng = np.random.default_rng(cfg.split_seed)
        order = rng.permutation(len(self.tasks))
        n_test = max(1, int(round(cfg.test_fraction * len(self.tasks))))
        self.test_ids = np.sort(order[:n_test])
        self.train_ids = np.sort(order[n_test:])

    @property
    def start(self) -> np.ndarray:
        return np.array([self.cfg.size // 2, self.cfg.size // 2], dtype=np.int64)

    def optimal_return(self, task_ids: np.ndarray) -> np.ndarray:
        """Best achievable return from the start cell, per task."""
        tasks, horizon = self.tasks[task_ids], self.cfg.horizon
        # a target on the start cell is reached by the first step (a no-op)
        first = np.maximum(np.abs(tasks[:, :2] - self.start).sum(1), 1)
        if self.cfg.name == "darkroom":
            return np.where(first <= horizon, horizon - first + 1, 0).astype(np.float64)
        if self.cfg.name == "darkroom_hard":
            return (first <= horizon).astype(np.float64)
        second = np.abs(tasks[:, 2:] - tasks[:, :2]).sum(1)
        return ((first <= horizon).astype(np.float64) + (first + second <= horizon))


class BatchedDarkroom:
    """B independent episodes of one Darkroom-family env, stepped together."""

    def __init__(self, cfg: EnvConfig, tasks: np.ndarray):
        self.cfg, self.tasks = cfg, np.asarray(tasks, dtype=np.int64)
        self.n = len(self.tasks)
        self.reset()

    @property
    def n_tabular_states(self) -> int:
        """Cells x one progress bit (key held / goal already rewarded): what a tabular learner needs."""
        return self.cfg.size * self.cfg.size * 2

    def reset(self) -> np.ndarray:
        self.pos = np.tile(np.array([self.cfg.size // 2] * 2, dtype=np.int64), (self.n, 1))
        self.progress = np.zeros(self.n, dtype=bool)  # key held (key-to-door) or goal reached (hard)
        self.done_door = np.zeros(self.n, dtype=bool)
        self.t = 0
        return self.pos.copy()

    def tabular_state(self) -> np.ndarray:
        return (self.pos[:, 0] * self.cfg.size + self.pos[:, 1]) * 2 + self.progress

    def step(self, actions: np.ndarray):
        """Returns (obs, reward, done); every episode in the batch ends at the same step."""
        self.pos = np.clip(self.pos + MOVES[actions], 0, self.cfg.size - 1)
        at_first = (self.pos == self.tasks[:, :2]).all(1)
        name = self.cfg.name
        if name == "darkroom":
            reward = at_first.astype(np.float32)
        elif name == "darkroom_hard":
            reward = (at_first & ~self.progress).astype(np.float32)
            self.progress |= at_first
        else:
            got_key = at_first & ~self.progress
            at_door = (self.pos == self.tasks[:, 2:]).all(1) & self.progress & ~self.done_door
            reward = (got_key | at_door).astype(np.float32)
            self.progress |= got_key
            self.done_door |= at_door
        self.t += 1
        return self.pos.copy(), reward, self.t >= self.cfg.horizon


class DarkroomEnv(gym.Env):
    """One episode at a time, for gymnasium users and stable-baselines3."""

    metadata = {"render_modes": []}

    def __init__(self, cfg: EnvConfig | None = None, task=None):
        self.cfg = cfg or EnvConfig()
        self.task = tuple(int(v) for v in task) if task is not None else (0, 0)
        self.observation_space = gym.spaces.Box(0, self.cfg.size - 1, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        c = self.cfg.size // 2
        self.x, self.y, self.t = c, c, 0
        self.has_key = self.reached = self.opened = False
        return np.array([self.x, self.y], dtype=np.float32), {}

    def step(self, action):
        dx, dy = [(0, 1), (0, -1), (-1, 0), (1, 0), (0, 0)][int(action)]
        last = self.cfg.size - 1
        self.x, self.y = min(max(self.x + dx, 0), last), min(max(self.y + dy, 0), last)
        self.t += 1
        here = (self.x, self.y)
        reward = 0.0
        if self.cfg.name == "darkroom":
            reward = float(here == self.task[:2])
        elif self.cfg.name == "darkroom_hard":
            if here == self.task[:2] and not self.reached:
                reward, self.reached = 1.0, True
        else:
            if here == self.task[:2] and not self.has_key:
                reward, self.has_key = 1.0, True
            elif here == self.task[2:] and self.has_key and not self.opened:
                reward, self.opened = 1.0, True
        obs = np.array([self.x, self.y], dtype=np.float32)
        return obs, reward, False, self.t >= self.cfg.horizon, {}
