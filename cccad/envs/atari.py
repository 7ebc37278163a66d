"""Atari through ale-py's own vectorised env (the ROMs ship inside ale-py, so this works offline).

Preprocessing, all from `EnvConfig`: ALE's grey or RGB screen resized to frame_size x frame_size,
channels first; each action repeated `frame_skip` emulator frames; ALE v5's sticky actions. A
*state* is the last `frame_stack` frames, padded at an episode's start with its first frame:
`stack_indices` is that rule, used by the agent's envs, the collector and the dataset reader
alike, so the world model sees exactly what the agent saw.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from cccad.config import ConfigError, EnvConfig
from cccad.runtime import threads

_registered = False


def register() -> None:
    global _registered
    if not _registered:
        import ale_py
        gym.register_envs(ale_py)
        _registered = True


def check_game(cfg: EnvConfig) -> None:
    """Refuse an unknown game before any work, naming it."""
    register()
    try:
        gym.spec(cfg.game)
    except gym.error.Error:
        known = sorted(k for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
        raise ConfigError(f"env.game: unknown ALE game '{cfg.game}' (e.g. {', '.join(known[:4])}, ...)") from None


def channels(cfg: EnvConfig) -> int:
    return 1 if cfg.grayscale else 3


def frame_shape(cfg: EnvConfig) -> tuple[int, int, int]:
    return channels(cfg), cfg.frame_size, cfg.frame_size


def ale_rom(cfg: EnvConfig) -> str:
    """The ROM id ALE's own vectorised env takes (e.g. "assault" for ALE/Assault-v5)."""
    register()
    return gym.spec(cfg.game).kwargs["game"]


def vector_env(cfg: EnvConfig, n_envs: int, max_episode_steps: int | None, n_threads: int | None = None):
    """`n_envs` envs of ALE's own vectorised env: emulation, frame skip, resize and grey in C++
    threads (`n_threads`, else as many as the process's CPUs; at most one per env), stepped
    together (`step`, or `send` that returns at once and `recv` that waits). Observations
    are single frames (see `frames`); an env that ends an episode starts the next in the same step:
    its frame is the new episode's first, the last one is `info["final_obs"]`. Rewards unclipped,
    no no-op starts, life losses do not end episodes: the dataset records the game as it is."""
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        ale_rom(cfg), n_envs, num_threads=min(n_threads or threads(), n_envs), img_height=cfg.frame_size, img_width=cfg.frame_size,
        grayscale=cfg.grayscale, stack_num=1, frameskip=cfg.frame_skip, maxpool=False, noop_max=0,
        repeat_action_probability=cfg.sticky_actions, reward_clipping=False, use_fire_reset=False,
        episodic_life=False, max_num_frames_per_episode=(max_episode_steps or 27_000) * cfg.frame_skip,
        autoreset_mode="SameStep")


def frames(obs: np.ndarray) -> np.ndarray:
    """The vectorised env's observations (n, 1, S, S) grey or (n, 1, S, S, 3) RGB as frames (n, C, S, S)."""
    return obs if obs.ndim == 4 else np.ascontiguousarray(obs[:, 0].transpose(0, 3, 1, 2))


def stack_indices(newest: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
    """Frame indices of the states whose newest frame is `newest` in episodes starting at frame
    `first`: (len, k), oldest first, repeating the episode's first frame before its start."""
    return np.maximum(newest[:, None] - np.arange(k - 1, -1, -1), first[:, None])


class Stacks:
    """Each env's state, its last k frames as (k * C, S, S), by the `stack_indices` rule."""

    def __init__(self, first: np.ndarray, k: int):
        self.k, self.buf = k, np.repeat(first[:, None], k, axis=1)  # (n, k, C, S, S)

    def push(self, new: np.ndarray, starts: np.ndarray) -> None:
        """Append each env's newest frame; an env whose episode `starts` with it is filled with it."""
        self.buf[:, :-1] = self.buf[:, 1:]
        self.buf[:, -1] = new
        self.buf[starts] = new[starts, None]

    def states(self) -> np.ndarray:
        n, k, c, h, w = self.buf.shape
        return self.buf.reshape(n, k * c, h, w).copy()

    def after(self, i: int, last: np.ndarray) -> np.ndarray:
        """Env i's state had `last` been pushed into it (an ended episode's final state, before the
        next episode's first frame replaces it)."""
        return np.concatenate([*self.buf[i, 1:], last])
