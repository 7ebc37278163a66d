"""Atari transition collection (the PPO agent's policy acting, a share of random actions, every
transition recorded into the dataset; the envs in one worker process, the policy beside it in
this one) against raw ALE stepping with the same preprocessing, the same number of envs and the
same resets, random actions, nothing recorded, in one process, in one run. Goal: collection at
least 80% of raw."""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from common import ROOT, Row, report

from cccad.config import load_config
from cccad.data.store import DatasetWriter
from cccad.data.transitions import collect_transitions, env_seed, make_agent
from cccad.envs.atari import FrameStack, make_env


def raw_steps_per_s(cfg, steps: int) -> float:
    """The same envs stepped one after another in this process with random actions, nothing
    recorded; reset as collection resets them (each env's first episode seeded, the next ones not)."""
    envs = [FrameStack(make_env(cfg.env, cfg.atari.max_episode_steps), cfg.env.frame_stack)
            for _ in range(cfg.atari.n_envs)]
    rng = np.random.default_rng(0)
    n = envs[0].action_space.n
    t = time.perf_counter()
    for i, env in enumerate(envs):
        env.reset(seed=env_seed(cfg, i))
    for _ in range(steps // len(envs)):
        for env, action in zip(envs, rng.integers(0, n, len(envs))):
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()
    return steps // len(envs) * len(envs) / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=24)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--env-workers", type=int, default=1)
    a = p.parse_args()
    cfg = load_config(ROOT / "configs" / "studies" / "worldmodel.yaml",
                      [f"atari.n_envs={a.n_envs}", f"atari.episodes={a.episodes}", f"atari.max_episode_steps={a.max_steps}",
                       f"atari.env_workers={a.env_workers}"])
    policy = make_agent(cfg).policy  # an untrained agent costs the same to run as a trained one
    collected, raw = [], []
    for _ in range(a.repeats):  # alternating, best of each: this machine's speed drifts by tens of percent
        with tempfile.TemporaryDirectory() as tmp:
            writer = DatasetWriter(f"{tmp}/ds", "atari_transitions", {}, "bench")
            stats = collect_transitions(cfg, policy, writer)
            writer.commit({"transitions": stats["transitions"]}, stats)
        collected.append(stats["transitions_per_s"])
        raw.append(raw_steps_per_s(cfg, stats["transitions"]))
    stats["transitions_per_s"], raw = max(collected), max(raw)
    print(f"  {a.n_envs} envs, {cfg.env.game} {cfg.env.frame_size}x{cfg.env.frame_size} grey, stack "
          f"{cfg.env.frame_stack}: collection {stats['transitions_per_s']:.0f}/s ({stats['transitions']} transitions), "
          f"raw ALE {raw:.0f}/s")
    report([Row("atari collect", f"transitions/s recorded by the PPO policy ({a.n_envs} envs in {a.env_workers} "
                f"worker, {cfg.env.frame_size}x{cfg.env.frame_size} grey, stack {cfg.env.frame_stack})",
                stats["transitions_per_s"], "raw ALE steps/s, same preprocessing, envs and resets, random actions, "
                "one process",
                raw, ">= 0.8x raw")], "atari_collect_throughput")


if __name__ == "__main__":
    main()
