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

from cccad.config import config_hash, load_config
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetWriter
from cccad.data.collected import KIND, dataset_config
from cccad.stages import train


def measure(config: str, steps: int, tmp: Path) -> tuple[float, float, str]:
    """Samples/s through train.run and the GFLOP/s they amount to."""
    base = ["collect.streams_per_task=2", "train.val_fraction=0", f"train.steps={steps}", "train.num_warmup_steps=0",
            f"train.checkpoint_every={steps // 2}", "train.log_every=10"]
    cfg = load_config(config, base)
    expect = dataset_config(cfg)
    data = tmp / f"ds-{Path(config).stem}"
    writer = DatasetWriter(data, KIND["darkroom"], expect, config_hash(expect))
    stats = collect_histories(cfg, writer)
    writer.commit({"transitions": stats["transitions"]}, stats)
    cfg = load_config(config, base + [f"inputs.dataset={data}"])
    result = train.run(cfg, tmp / f"run-{Path(config).stem}", log=lambda *_: None)
    rate = float(np.mean([h["samples_per_s"] for h in result["history"][len(result["history"]) // 2:]]))
    m = cfg.model
    label = f"n_embd {m.n_embd}, {m.n_layer} layers, context {m.context_len}, batch {cfg.train.batch_size}"
    return rate, rate * result["flops_per_token"] * m.context_len / 1e9, label


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config, name in ((ROOT / "configs" / "studies" / "reference.yaml", "reference model"),
                             (ROOT / "configs" / "studies" / "full.yaml", "full-study model")):
            peak = matmul_gflops()
            rate, achieved, label = measure(str(config), a.steps, Path(tmp))
            peak = max(peak, matmul_gflops())
            print(f"  {name} ({label}), {torch.get_num_threads()} threads: {rate:.1f} samples/s = "
                  f"{achieved:.1f} GFLOP/s; matmul peak {peak:.1f} GFLOP/s")
            rows += [Row("train", f"AD training samples/s, {name} ({label}), real loop", rate, "-", 0, "(figure)"),
                     Row("train", f"AD training GFLOP/s, {name} (6N + 12LdK per token)", achieved,
                         "fp32 matmul GFLOP/s (2048x2048), same run", peak, "MFU >= 0.25")]
    report(rows, "train_throughput")


if __name__ == "__main__":
    main()
