"""Atari transition collection (the PPO agent's policy acting, a share of random actions, every
transition recorded into the dataset) against raw ALE stepping with the same preprocessing and
the same number of envs, random actions, nothing recorded, in one run. Goal: collection at least
80% of raw."""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from common import ROOT, Row, report

from cccad.config import load_config
from cccad.data.store import DatasetWriter
from cccad.data.transitions import collect_transitions, make_agent
from cccad.envs.atari import FrameStack, make_env


def raw_steps_per_s(cfg, steps: int) -> float:
    envs = [FrameStack(make_env(cfg.env, cfg.atari.max_episode_steps), cfg.env.frame_stack)
            for _ in range(cfg.atari.n_envs)]
    rng = np.random.default_rng(0)
    for i, env in enumerate(envs):
        env.reset(seed=i)
    n = envs[0].action_space.n
    t = time.perf_counter()
    for _ in range(steps // len(envs)):
        for env, action in zip(envs, rng.integers(0, n, len(envs))):
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()
    return steps // len(envs) * len(envs) / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--n-envs", type=int, default=8)
    a = p.parse_args()
    cfg = load_config(ROOT / "configs" / "studies" / "worldmodel.yaml",
                      [f"atari.n_envs={a.n_envs}", f"atari.episodes={a.episodes}", "atari.max_episode_steps=500"])
    policy = make_agent(cfg).policy  # an untrained agent costs the same to run as a trained one
    with tempfile.TemporaryDirectory() as tmp:
        writer = DatasetWriter(f"{tmp}/ds", "atari_transitions", {}, "bench")
        stats = collect_transitions(cfg, policy, writer)
        writer.commit({"transitions": stats["transitions"]}, stats)
    raw = raw_steps_per_s(cfg, stats["transitions"])
    print(f"  {a.n_envs} envs, {cfg.env.game} {cfg.env.frame_size}x{cfg.env.frame_size} grey, stack "
          f"{cfg.env.frame_stack}: collection {stats['transitions_per_s']:.0f}/s ({stats['transitions']} transitions), "
          f"raw ALE {raw:.0f}/s")
    report([Row("atari collect", f"transitions/s recorded by the PPO policy ({a.n_envs} envs, "
                f"{cfg.env.frame_size}x{cfg.env.frame_size} grey, stack {cfg.env.frame_stack})",
                stats["transitions_per_s"], "raw ALE steps/s, same preprocessing and envs, random actions",
                raw, ">= 0.8x raw")], "atari_collect_throughput")


if __name__ == "__main__":
    main()
