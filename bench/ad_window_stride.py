"""What AD's in-context evaluation costs when its full window moves a step at a time (recomputed
every step: evaluate.window_stride 1) against a whole episode at a time (recomputed once per
episode, then appended to its KV cache: window_stride = env.horizon), at memory_key_door's sizes
(window 200, 50-step episodes), through the evaluation's own rollout (cccad/incontext.py). The two
alternate in the same run (A/B/A/B; the median counts). Figures: µs per stream-step once the
window is full (a rollout less one that only fills it), and over a whole rollout of `--episodes`
episodes; and the full evaluation's minutes projected from both (normal condition and the
recent-only control, 648 held-out tasks x 1 stream x 50 episodes, at this run's batch of streams:
the evaluation's 512 amortise more)."""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from common import ROOT, Row, report

from cccad.config import load_config
from cccad.envs.darkroom import DarkroomTasks
from cccad.incontext import rollout
from cccad.models.policies import build_model
from cccad.study import env_layer


def timed_rollout(cfg, model, tasks) -> float:
    t = time.perf_counter()
    rollout(model, cfg, tasks, seed=0, device=torch.device("cpu"))
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--streams", type=int, default=128, help="held-out tasks stepped together")
    p.add_argument("--episodes", type=int, default=6, help="episodes per timed rollout (4 fill the window)")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs; the median counts")
    a = p.parse_args()
    torch.set_num_threads(1)
    config = ROOT / "configs" / "studies" / "memory_key_door.yaml"
    layer = [env_layer(config, "dark_key_to_door")]
    ad = lambda *more: load_config(config, ["model.kind=ad", *more], extra=layer)  # noqa: E731
    full = ad()
    horizon, window = full.env.horizon, full.model.context_len
    torch.manual_seed(0)
    model = build_model(full).eval()  # untrained: the cost does not depend on the weights
    family = DarkroomTasks(full.env)
    tasks = family.tasks[family.test_ids[:a.streams]]
    strides = {"stride 1": 1, f"stride {horizon}": horizon}
    cfgs = {name: ad(f"evaluate.episodes={a.episodes}", f"evaluate.window_stride={s}") for name, s in strides.items()}
    seconds = {name: [] for name in strides}
    for _ in range(a.repeats):
        for name in strides:
            seconds[name].append(timed_rollout(cfgs[name], model, tasks))
    # the steps before the window fills cost the same under both: the rest is what differs
    fill = ad(f"evaluate.episodes={window // horizon}")
    fill_s = statistics.median(timed_rollout(fill, model, tasks) for _ in range(a.repeats))
    steps = a.episodes * horizon
    n_tasks = len(family.test_ids) * full.evaluate.streams_per_task
    full_steps, full_slide = full.evaluate.episodes * horizon, full.evaluate.episodes * horizon - window
    us, slide_us, minutes = {}, {}, {}
    for name, s in seconds.items():
        total = statistics.median(s)
        slide_per_step = (total - fill_s) / (steps - window) / a.streams  # s per stream-step once full
        fill_per_step = fill_s / window / a.streams
        slide_us[name] = 1e6 * slide_per_step
        us[name] = 1e6 * total / steps / a.streams
        # normal condition + the recent-only control (a shorter window: costed as the normal one)
        minutes[name] = 2 * n_tasks * (window * fill_per_step + full_slide * slide_per_step) / 60
        print(f"AD {name}: {us[name]:.0f} µs per stream-step over {a.episodes} episodes ({a.streams} streams; "
              f"runs {', '.join(f'{x:.1f}' for x in s)} s; window filling {fill_s:.1f} s); "
              f"projected evaluation {minutes[name]:.0f} min ({n_tasks} streams x {full_steps} steps, 2 conditions)",
              flush=True)
    one, ep = "stride 1", f"stride {horizon}"
    report([Row("AD window stride", f"AD evaluation µs/stream-step once the window is full, moving {horizon} "
                f"(window {window})", slide_us[ep], "moving 1 step", slide_us[one], "(reported)"),
            Row("AD window stride", f"AD evaluation µs/stream-step over {a.episodes} episodes, filling included, "
                f"moving {horizon}", us[ep], "moving 1 step", us[one], "(reported)"),
            Row("AD window stride", f"AD evaluation minutes projected for memory_key_door, window moving {horizon}",
                minutes[ep], "moving 1 step", minutes[one], "(reported)")],
           "ad_window_stride")


if __name__ == "__main__":
    main()
