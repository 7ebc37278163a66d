"""AD training throughput through the real training loop (data windows from the memory-mapped
dataset, optimizer, schedule, logging, checkpoints), and model FLOP utilisation against this
machine's fp32 matmul throughput measured in the same run. Goal: MFU 25% or more."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import ROOT, Row, matmul_gflops, report

from cccad.config import load_config
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetWriter
from cccad.stages.collect import KIND, dataset_config
from cccad.config import config_hash
from cccad.stages import train


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--config", default=str(ROOT / "configs" / "studies" / "reference.yaml"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"collect.streams_per_task=2", "train.val_fraction=0", f"train.steps={a.steps}",
                "train.num_warmup_steps=0", f"train.checkpoint_every={a.steps // 2}", "train.log_every=10"]
        cfg = load_config(a.config, base)
        expect = dataset_config(cfg)
        writer = DatasetWriter(Path(tmp) / "ds", KIND, expect, config_hash(expect))
        stats = collect_histories(cfg, writer)
        writer.commit({"transitions": stats["transitions"]}, stats)
        cfg = load_config(a.config, base + [f"train.dataset={tmp}/ds"])
        peak = matmul_gflops()
        result = train.run(cfg, Path(tmp) / "run", log=lambda *_: None)
        rate = np.mean([h["samples_per_s"] for h in result["history"][len(result["history"]) // 2:]])
        flops_per_sample = result["flops_per_token"] * cfg.model.context_len
        achieved = rate * flops_per_sample / 1e9
        peak_after = matmul_gflops()
    peak = max(peak, peak_after)
    m = cfg.model
    print(f"  model: n_embd {m.n_embd}, {m.n_layer} layers, context {m.context_len}, batch {cfg.train.batch_size}, "
          f"{torch.get_num_threads()} threads; {rate:.1f} samples/s = {achieved:.1f} GFLOP/s; matmul peak {peak:.1f} GFLOP/s")
    report([Row("train", "AD training samples/s (real loop)", rate, "-", 0, "(figure)"),
            Row("train", "AD training GFLOP/s (6N + 12LdK per token)", achieved, "fp32 matmul GFLOP/s, same run",
                peak, "MFU >= 0.25")], "train_throughput")


if __name__ == "__main__":
    main()
