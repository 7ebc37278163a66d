"""World-model training throughput through the real training loop (encoder-decoder and JEPA,
full-study nets), beside the data loader's own throughput on the same batches (stacked uint8
states gathered from the memory-mapped frames). Goal: the loader at least 5x faster than
training consumes."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, Row, report

from cccad.config import config_hash, load_config
from cccad.data.store import DatasetWriter
from cccad.data.collected import KIND, dataset_config
from cccad.data.transitions import collect_transitions, make_agent, open_transitions
from cccad.stages import train_encoder_decoder, train_jepa


def loader_samples_per_s(cfg, data, seconds: float = 3.0) -> float:
    n, t, step = 0, time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        data.train_batch(np.random.default_rng([cfg.seed, step]), cfg.train.batch_size, slice(None), step)
        n, step = n + cfg.train.batch_size, step + 1
    return n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    base = ["atari.episodes=8", "atari.max_episode_steps=500", "atari.n_envs=4", f"train.steps={a.steps}",
            f"train.batch_size={a.batch_size}", "train.num_warmup_steps=0", f"train.checkpoint_every={a.steps}",
            f"train.log_every={max(1, a.steps // 4)}", f"train.val_every={a.steps}", "train.val_batches=1", "probe.val_samples=64"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "studies" / "worldmodel.yaml", base)
        expect = dataset_config(cfg)
        data_dir = Path(tmp) / "dataset"
        writer = DatasetWriter(data_dir, KIND["atari"], expect, config_hash(expect))
        stats = collect_transitions(cfg, make_agent(cfg).policy, writer)
        writer.commit({"transitions": stats["transitions"]}, stats)
        cfg = load_config(ROOT / "configs" / "studies" / "worldmodel.yaml", base + [f"inputs.dataset={data_dir}"])
        data = open_transitions(cfg)
        for name, stage in (("encoder-decoder", train_encoder_decoder), ("JEPA", train_jepa)):
            result = stage.run(cfg, Path(tmp) / name, log=lambda *_: None)
            rate = float(np.mean([h["samples_per_s"] for h in result["history"][len(result["history"]) // 2:]]))
            loader = loader_samples_per_s(cfg, data)
            print(f"  {name} (latent {cfg.world_model.latent_dim}, channels {cfg.world_model.channels}, batch "
                  f"{a.batch_size}): training {rate:.0f} samples/s, loader {loader:.0f} samples/s "
                  f"({stats['transitions']} transitions)")
            rows.append(Row("world-model train", f"data loader samples/s (stacked 4x64x64 uint8 states, batch "
                            f"{a.batch_size})", loader, f"{name} training samples/s, real loop, full-study nets",
                            rate, "loader >= 5x training"))
    report(rows, "worldmodel_train_throughput")


if __name__ == "__main__":
    main()
