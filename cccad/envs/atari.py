"""Atari through gymnasium + ale-py (the ROMs ship inside ale-py, so this works offline).

Preprocessing, all from `EnvConfig`: ALE's own grey or RGB screen, area-resized to
frame_size x frame_size, channels first; each action repeated `frame_skip` emulator frames;
ALE v5's sticky actions. A *state* is the last `frame_stack` frames, padded at an episode's start
with its first frame: `stack_indices` is that rule, used by the agent's env wrapper and by the
dataset reader alike, so the world model sees exactly what the agent saw.
"""
from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

from cccad.config import ConfigError, EnvConfig

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


class Preprocess(gym.ObservationWrapper):
    """ALE screen (H, W) or (H, W, 3) -> uint8 (C, S, S), area-resized."""

    def __init__(self, env: gym.Env, cfg: EnvConfig):
        super().__init__(env)
        self.size = cfg.frame_size
        self.observation_space = gym.spaces.Box(0, 255, frame_shape(cfg), np.uint8)

    def observation(self, obs):
        import cv2  # (imported here: only Atari runs need it)

        small = cv2.resize(obs, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return small[None] if small.ndim == 2 else np.ascontiguousarray(small.transpose(2, 0, 1))


def make_env(cfg: EnvConfig, max_episode_steps: int | None = None) -> gym.Env:
    """One preprocessed env emitting single frames (C, S, S)."""
    register()
    env = gym.make(cfg.game, obs_type="grayscale" if cfg.grayscale else "rgb", frameskip=cfg.frame_skip,
                   repeat_action_probability=cfg.sticky_actions, full_action_space=False,
                   max_episode_steps=max_episode_steps)
    return Preprocess(env, cfg)


def stack_indices(newest: np.ndarray, first: np.ndarray, k: int) -> np.ndarray:
    """Frame indices of the states whose newest frame is `newest` in episodes starting at frame
    `first`: (len, k), oldest first, repeating the episode's first frame before its start."""
    return np.maximum(newest[:, None] - np.arange(k - 1, -1, -1), first[:, None])


class FrameStack(gym.Wrapper):
    """States of the last k frames as (k * C, S, S), by the `stack_indices` rule."""

    def __init__(self, env: gym.Env, k: int):
        super().__init__(env)
        self.k, self.frames = k, deque(maxlen=k)
        c, h, w = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 255, (k * c, h, w), np.uint8)

    def state(self) -> np.ndarray:
        return np.concatenate(list(self.frames), axis=0)

    def reset(self, **kwargs):
        frame, info = self.env.reset(**kwargs)
        self.frames.extend([frame] * self.k)
        return self.state(), info

    def step(self, action):
        frame, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(frame)
        return self.state(), reward, terminated, truncated, info
