"""History collection: batched tabular Q-learning vs stable-baselines3 PPO per task, on the same
tasks with the same budget of transitions, in one run. Goal: batched at least 50x faster."""
from __future__ import annotations

import argparse
import tempfile

from common import ROOT, Row, report

from cccad.config import load_config
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetWriter


def transitions_per_s(overrides: list[str]) -> float:
    cfg = load_config(ROOT / "configs" / "studies" / "full.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        writer = DatasetWriter(f"{tmp}/ds", "learning_histories", {}, "bench")
        stats = collect_histories(cfg, writer)
        writer.abort()
    print(f"  {cfg.collect.source}: {stats['transitions']:,} transitions in {stats['seconds']:.1f}s, "
          f"last-episode normalised return {stats['normalised_return_curve'][-1]:.2f}")
    return stats["transitions_per_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=2, help="streams per task (budget for both sources)")
    p.add_argument("--episodes", type=int, default=25)
    a = p.parse_args()
    budget = [f"collect.streams_per_task={a.streams}", f"collect.episodes={a.episodes}"]
    sb3 = transitions_per_s(budget + ["collect.source=sb3_ppo"])
    batched = transitions_per_s(budget + ["collect.source=qlearning"])
    full = transitions_per_s(["collect.source=qlearning"])  # the reference study's collection size
    report([Row("collect", f"batched Q-learning transitions/s (73 tasks x {a.streams} streams x {a.episodes} episodes)",
                batched, "SB3 PPO transitions/s, same tasks and budget", sb3, ">= 50x"),
            Row("collect", "batched Q-learning transitions/s at the reference size (73 tasks x 20 streams x 120 episodes)",
                full, "SB3 PPO transitions/s (above)", sb3, "(for scale)")], "collect_throughput")


if __name__ == "__main__":
    main()
