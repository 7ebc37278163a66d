"""Atari through gymnasium + ale-py (the ROMs ship inside ale-py, so this works offline).

Preprocessing, all from `EnvConfig`: ALE's own grey or RGB screen, area-resized to
frame_size x frame_size, channels first; each action repeated `frame_skip` emulator frames;
ALE v5's sticky actions. A *state* is the last `frame_stack` frames, padded at an episode's start
with its first frame: `stack_indices` is that rule, used by the agent's env wrapper and by the
dataset reader alike, so the world model sees exactly what the agent saw.
"""
from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections import deque
from multiprocessing.connection import Connection

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


class EnvWorker:
    """`n_envs` envs stepped in a process of their own, so that emulation goes on while the
    caller does other work (picks the next actions). `send` queues a list of requests, each
    (env, "reset", seed or None) or (env, "step", action); `recv` answers one list, in the order
    sent, with (frame, reward, terminated, truncated) per request: single frames, so that an
    answer fits in the pipe's buffer and the worker never waits for its reader (the caller
    stacks them). The process ends when its pipe closes, also when the caller is killed."""

    def __init__(self, cfg: EnvConfig, max_episode_steps: int | None, n_envs: int):
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        # a plain subprocess, not multiprocessing: that would import the caller's main module again
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from cccad.envs.atari import serve; serve({from_parent}, {to_parent})"],
            pass_fds=(from_parent, to_parent),
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))))
        os.close(from_parent)
        os.close(to_parent)
        self.out, self.into = Connection(to_child, readable=False), Connection(from_child, writable=False)
        self.send((cfg, max_episode_steps, n_envs))
        self.n_actions = self.recv()

    def send(self, requests) -> None:
        self.out.send(requests)

    def recv(self):
        try:
            answer = self.into.recv()
        except EOFError:
            raise RuntimeError(f"Atari env worker (pid {self.process.pid}) died") from None
        if isinstance(answer, str):
            raise RuntimeError(f"Atari env worker failed:\n{answer}")
        return answer

    def close(self) -> None:
        try:
            self.out.send(None)
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):  # already gone, or stuck
            self.process.kill()
        self.out.close()
        self.into.close()


def serve(from_parent: int, to_parent: int) -> None:
    """EnvWorker's process: makes the envs, then answers request lists until it gets None (or
    its pipe closes: the caller is gone)."""
    into, out = Connection(from_parent, writable=False), Connection(to_parent, readable=False)
    try:
        cfg, max_episode_steps, n_envs = into.recv()
        envs = [make_env(cfg, max_episode_steps) for _ in range(n_envs)]
        out.send(int(envs[0].action_space.n))
        while (requests := into.recv()) is not None:
            answers = []
            for i, op, arg in requests:
                if op == "reset":
                    frame, _ = envs[i].reset(seed=arg)
                    answers.append((frame, 0.0, False, False))
                else:
                    frame, reward, terminated, truncated, _ = envs[i].step(arg)
                    answers.append((frame, float(reward), bool(terminated), bool(truncated)))
            out.send(answers)
        for env in envs:
            env.close()
    except EOFError:  # the caller is gone
        pass
    except Exception:
        out.send(traceback.format_exc())
