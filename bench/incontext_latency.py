"""Per-step action latency and peak memory of in-context evaluation when the context already
holds L transitions (L = 1k, 4k, 16k): AD with a KV cache (its window made long enough to hold
all L) against CompressedAD (latents + recent window), both at the full-study model size and
through the evaluation's own context objects (cccad/models/context.py). Each (model, L) runs in
its own process so its peak memory is its own; the figure is the best of 3 timed passes over the
same steps (each from a fresh context: the mean over whole compression cycles). Goals: CompressedAD flat (16k within 1.2x of 1k),
and at least 5x cheaper per step than AD at 16k."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from common import ROOT, Row, report

from cccad.config import load_config
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM, BatchedDarkroom, DarkroomTasks
from cccad.models.context import History, context_for
from cccad.models.policies import build_model

LENGTHS = (1024, 4096, 16384)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(kind: str, length: int, streams: int, timed: int, repeats: int) -> dict:
    """Fill a history of `length` random-policy Darkroom transitions, bring the context up to
    date, then time `timed` further steps (for CompressedAD: whole compression cycles)."""
    overrides = [f"model.kind={kind}"]
    if kind == "ad":
        overrides.append(f"model.context_len={length + timed}")
    cfg = load_config(ROOT / "configs" / "studies" / "full.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tasks = DarkroomTasks(cfg.env)
    env = BatchedDarkroom(cfg.env, tasks.tasks[tasks.test_ids[:streams]])
    total = length + timed
    history = History(streams, total, OBS_DIM, N_ACTIONS, cfg.env.size - 1, "cpu")
    rng = np.random.default_rng(0)
    obs = env.reset()
    for t in range(total):
        if env.t == cfg.env.horizon:
            obs = env.reset()
        history.states[:, t] = torch.from_numpy(obs)
        action = rng.integers(0, N_ACTIONS, streams)
        obs, reward, _ = env.step(action)
        history.actions[:, t], history.rewards[:, t] = torch.from_numpy(action), torch.from_numpy(reward)
        history.next_states[:, t] = torch.from_numpy(obs)
    before = rss_mb()
    means = []
    for _ in range(repeats):  # best of `repeats` passes over the same steps, each from a fresh context
        context = context_for(model, history)
        t0 = time.perf_counter()
        context.logits(length - 1)  # catch up: AD fills its cache, CompressedAD compresses the past
        catch_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in range(length, total):
            context.logits(t)
        means.append((time.perf_counter() - t0) / timed)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "length": length, "ms_per_step": 1000 * min(means), "ms_worst_pass": 1000 * max(means),
            "catch_up_s": catch_up, "peak_extra_mb": peak - before, "compressions": context.compressions}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=2, metavar=("KIND", "LENGTH"))
    p.add_argument("--streams", type=int, default=8, help="evaluation streams stepped together")
    p.add_argument("--timed", type=int, default=160, help="steps timed (4 compression cycles)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    a = p.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.streams, a.timed, a.repeats)))
        return
    res = {}
    for length in LENGTHS:
        for kind in ("ad", "compressed_ad"):
            out = subprocess.run([sys.executable, __file__, "--one", kind, str(length), "--streams", str(a.streams),
                                  "--timed", str(a.timed), "--repeats", str(a.repeats)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            res[kind, length] = r
            print(f"{kind:14} L={length:6}: {r['ms_per_step']:7.2f} ms/step (worst pass {r['ms_worst_pass']:.2f}), "
                  f"peak +{r['peak_extra_mb']:.0f} MB, catch-up {r['catch_up_s']:.1f}s, "
                  f"{r['compressions']} compressions", flush=True)
    lo, hi = LENGTHS[0], LENGTHS[-1]
    c, ad = res["compressed_ad", hi], res["ad", hi]
    rows = [
        Row("in-context latency", f"CompressedAD ms/step at {hi} transitions", c["ms_per_step"],
            f"CompressedAD at {lo}", res["compressed_ad", lo]["ms_per_step"], "ratio <= 1.2 (flat)"),
        Row("in-context latency", f"AD (KV cache) ms/step at {hi} transitions", ad["ms_per_step"],
            f"CompressedAD at {hi}", c["ms_per_step"], "ratio >= 5"),
        Row("in-context memory", f"AD (KV cache) peak extra MB at {hi} transitions", ad["peak_extra_mb"],
            f"CompressedAD at {hi}", c["peak_extra_mb"], "(reported)"),
    ]
    for length in LENGTHS[:-1]:
        rows.append(Row("in-context latency", f"AD (KV cache) ms/step at {length} transitions",
                        res["ad", length]["ms_per_step"], f"CompressedAD at {length}",
                        res["compressed_ad", length]["ms_per_step"], "(reported)"))
    report(rows, "incontext_latency")


if __name__ == "__main__":
    main()
