"""Darkroom family (AD paper): the agent sees only its own (x, y); the task is hidden. Each env is a
row of `DARKROOM_RULES` (cccad/config.py): the agent must reach the task's targets in order (the
goal; or the key, then the door), each rewarded on the first arrival; `darkroom` also rewards
every step spent on its goal.

Two implementations with one behaviour: `BatchedDarkroom` steps many (task, stream) pairs in one
numpy operation (collection and evaluation use it); `DarkroomEnv` is a plain gymnasium Env written
independently, one step at a time, so a test can check that they agree step for step.
"""
from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np

from cccad.config import EnvConfig

N_ACTIONS = 5  # up, down, left, right, no-op
MOVES = np.array([[0, 1], [0, -1], [-1, 0], [1, 0], [0, 0]], dtype=np.int64)
OBS_DIM = 2


class DarkroomTasks:
    """The task set of one env config (every ordered choice of distinct target cells, as
    (x1, y1[, x2, y2])) and its fixed-seed train/test split; with `train_tasks`, a fixed subset of
    the training tasks."""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        cells = [(x, y) for x in range(cfg.size) for y in range(cfg.size)]
        self.tasks = np.array([sum(targets, ()) for targets in itertools.permutations(cells, cfg.rules.targets)],
                              dtype=np.int64)
        rng = np.random.default_rng(cfg.split_seed)
        order = rng.permutation(len(self.tasks))
        n_test = max(1, int(round(cfg.test_fraction * len(self.tasks))))
        self.test_ids = np.sort(order[:n_test])
        self.train_ids = np.sort(order[n_test:][:cfg.train_tasks])

    @property
    def start(self) -> np.ndarray:
        return np.array([self.cfg.size // 2, self.cfg.size // 2], dtype=np.int64)

    def optimal_return(self, task_ids: np.ndarray) -> np.ndarray:
        """Best achievable return from the start cell, per task: each target reached within the
        horizon is worth 1, and with `stay_rewarded` so is every later step on the last one."""
        tasks, horizon, rules = self.tasks[task_ids], self.cfg.horizon, self.cfg.rules
        arrival = np.zeros(len(tasks), dtype=np.int64)
        total = np.zeros(len(tasks))
        here = np.broadcast_to(self.start, (len(tasks), 2))
        for k in range(rules.targets):
            target = tasks[:, 2 * k:2 * k + 2]
            # a target on the cell the agent stands on is reached by the next step (a no-op)
            arrival = arrival + np.maximum(np.abs(target - here).sum(1), 1)
            total += arrival <= horizon
            here = target
        if rules.stay_rewarded:
            total += np.where(arrival <= horizon, horizon - arrival, 0)
        return total


class BatchedDarkroom:
    """B independent episodes of one Darkroom-family env, stepped together."""

    def __init__(self, cfg: EnvConfig, tasks: np.ndarray):
        self.cfg, self.tasks = cfg, np.asarray(tasks, dtype=np.int64)
        self.n = len(self.tasks)
        self.reset()

    @property
    def n_tabular_states(self) -> int:
        """Cells x one progress bit (a target already rewarded): what a tabular learner needs."""
        return self.cfg.size * self.cfg.size * 2

    def reset(self) -> np.ndarray:
        self.pos = np.tile(np.array([self.cfg.size // 2] * 2, dtype=np.int64), (self.n, 1))
        self.reached = np.zeros(self.n, dtype=np.int64)  # targets reached and rewarded so far
        self.t = 0
        return self.pos.copy()

    def tabular_state(self) -> np.ndarray:
        return (self.pos[:, 0] * self.cfg.size + self.pos[:, 1]) * 2 + (self.reached > 0)

    def step(self, actions: np.ndarray):
        """Returns (obs, reward, done); every episode in the batch ends at the same step."""
        rules = self.cfg.rules
        self.pos = np.clip(self.pos + MOVES[actions], 0, self.cfg.size - 1)
        rows = np.arange(self.n)
        nxt = np.minimum(self.reached, rules.targets - 1)  # the target sought (the last, once all are reached)
        target = self.tasks[rows[:, None], 2 * nxt[:, None] + np.arange(2)]
        on_target = (self.pos == target).all(1)
        arrived = on_target & (self.reached < rules.targets)
        staying = on_target & (self.reached == rules.targets) & rules.stay_rewarded
        # a target that rewards every step on it is never done: it stays the one sought
        self.reached += arrived & ~((nxt == rules.targets - 1) & rules.stay_rewarded)
        self.t += 1
        return self.pos.copy(), (arrived | staying).astype(np.float32), self.t >= self.cfg.horizon


class DarkroomEnv(gym.Env):
    """One episode at a time, for gymnasium users and stable-baselines3."""

    metadata = {"render_modes": []}

    def __init__(self, cfg: EnvConfig, task=None):
        self.cfg = cfg
        self.task = tuple(int(v) for v in task) if task is not None else (0, 0) * cfg.rules.targets
        self.observation_space = gym.spaces.Box(0, self.cfg.size - 1, shape=(OBS_DIM,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        c = self.cfg.size // 2
        self.x, self.y, self.t = c, c, 0
        self.next_target = 0
        return np.array([self.x, self.y], dtype=np.float32), {}

    def step(self, action):
        dx, dy = [(0, 1), (0, -1), (-1, 0), (1, 0), (0, 0)][int(action)]
        last = self.cfg.size - 1
        self.x, self.y = min(max(self.x + dx, 0), last), min(max(self.y + dy, 0), last)
        self.t += 1
        rules, reward = self.cfg.rules, 0.0
        if self.next_target < rules.targets:
            k = self.next_target
            if (self.x, self.y) == self.task[2 * k:2 * k + 2]:
                reward = 1.0
                if not (rules.stay_rewarded and k == rules.targets - 1):
                    self.next_target += 1
        obs = np.array([self.x, self.y], dtype=np.float32)
        return obs, reward, False, self.t >= self.cfg.horizon, {}
