"""Training speed at the published CompressedAD system's own sizes, through the real training loop
(windows gathered from the memory-mapped dataset, AdamW, schedule, logging), each case in a
process of its own (so its peak memory is its own), with its model FLOP utilisation against this
machine's fp32 matmul throughput measured in the same run.

The published system was measured side by side on a machine like this one (2 cores, fp32, 2
threads): AD training 41-44 sequences/s, compression pre-training 434-439 windows/s, CompressedAD
training at batch 128 out of memory (over 19.4 GiB). Goals: AD at 18% MFU or more (3x the speed
it had at 6%); pre-training at 2x the published rate (870 windows/s) or more.

Speed is the steady rate between the first logged step after warm-up and the last; FLOPs: AD's
6N + 12LdK per token (PaLM's formula), pre-training's counted by torch's FLOP counter on one
forward and backward pass (matrix products only)."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from common import ROOT, Row, matmul_gflops, report, steady_rate

from cccad.config import config_hash, load_config
from cccad.data.collected import KIND, dataset_config
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetWriter

AD = ["model.n_embd=32", "model.n_layer=4", "model.n_head=4", "model.dropout=0.1"]
COMPRESSION = ["model.n_latent=16", "model.chunk_len=59", "model.encoder_n_layer=3"]
# name: (stage, overrides, what the row says)
CASES = {
    "ad": ("train", AD + ["model.context_len=240", "train.batch_size=128"],
           "AD (width 32, 4 layers, 4 heads, 240 tokens, dropout 0.1, batch 128)"),
    "pretrain-self": ("pretrain_encoder", COMPRESSION + [
        "model.n_embd=64", "model.n_head=4", "pretrain.pretrain_decoder_n_layer=3",
        "pretrain.pretrain_batch_size=512", "pretrain.curriculum=[{steps: 0, depths: [1]}]"],
        "compression pre-training, self-attention encoder (width 64, 16 latents, 59-transition chunks, 3-layer encoder and decoder, batch 512)"),
    "pretrain-cross": ("pretrain_encoder", COMPRESSION + [
        "model.n_embd=64", "model.n_head=4", "model.encoder=cross", "pretrain.pretrain_decoder_n_layer=3",
        "pretrain.pretrain_batch_size=512", "pretrain.curriculum=[{steps: 0, depths: [1]}]"],
        "compression pre-training, cross-attention encoder (same sizes)"),
    "compressed-self": ("train", AD + COMPRESSION + ["model.kind=compressed_ad", "model.recent_len=118",
                                                     "train.batch_size=128"],
                        "CompressedAD (AD's sizes, 16 latents, chunks of 59, 118 recent, depth <= 3, self-attention encoder, batch 128)"),
    "compressed-cross": ("train", AD + COMPRESSION + ["model.kind=compressed_ad", "model.recent_len=118",
                                                      "model.encoder=cross", "train.batch_size=128"],
                         "CompressedAD, cross-attention encoder (same sizes)"),
}
# the published system's rates (midpoints of the ranges measured side by side), and the goals
PUBLISHED = {"ad": 42.5, "pretrain-self": 436.5, "pretrain-cross": 436.5}
GOALS = {"ad": ">= 3x", "pretrain-self": ">= 2x", "pretrain-cross": ">= 2x"}


def one(name: str, data: Path, out: Path, steps: int, warmup: int) -> dict:
    """Run one case (in this process); its steady samples/s, FLOPs per sample and peak RSS."""
    from cccad.stages import STAGES

    stage, overrides, _ = CASES[name]
    train = ["train.val_fraction=0", "train.num_warmup_steps=0", f"train.log_every={warmup}",
             f"train.val_every={warmup}", f"train.checkpoint_every={steps + 1}", f"inputs.dataset={data}"]
    if stage == "pretrain_encoder":
        overrides = [o.replace("steps: 0", f"steps: {steps}") for o in overrides] + [
            f"pretrain.pretrain_steps={steps}", "pretrain.pretrain_warmup_steps=0"]
    else:
        train.append(f"train.steps={steps}")
    cfg = load_config(ROOT / "configs" / "studies" / "full.yaml", ["collect.streams_per_task=2"] + overrides + train)
    torch.manual_seed(0)
    result = STAGES[stage].run(cfg, out, log=lambda *_: None)
    return {"samples_per_s": steady_rate(result["history"], warmup, steps), "flops_per_sample": flops_per_sample(cfg, stage, result),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def flops_per_sample(cfg, stage: str, result: dict) -> float | None:
    if stage == "train":
        return result["flops_per_token"] * cfg.model.context_len if cfg.model.kind == "ad" else None
    from torch.utils.flop_counter import FlopCounterMode

    from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
    from cccad.models.ad import n_token_features
    from cccad.models.compressed_ad import EncoderPretrainer

    model = EncoderPretrainer(cfg.model, cfg.pretrain, OBS_DIM, N_ACTIONS)
    window = torch.randn(1, cfg.model.chunk_len, n_token_features(OBS_DIM, N_ACTIONS))
    with FlopCounterMode(display=False) as counter:
        model(window).sum().backward()
    return float(counter.get_total_flops())


def dataset(tmp: Path) -> Path:
    cfg = load_config(ROOT / "configs" / "studies" / "full.yaml", ["collect.streams_per_task=2"])
    expect = dataset_config(cfg)
    writer = DatasetWriter(tmp / "dataset", KIND["darkroom"], expect, config_hash(expect))
    stats = collect_histories(cfg, writer)
    writer.commit({"transitions": stats["transitions"]}, stats)
    return tmp / "dataset"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--cases", default=",".join(CASES), help="which cases (default all)")
    p.add_argument("--case", help=argparse.SUPPRESS)  # (one case, in this process: for the parent)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        print(json.dumps(one(a.case, Path(a.data), Path(a.out), a.steps, a.warmup)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp))
        for name in a.cases.split(","):
            stage, _, label = CASES[name]
            peak = matmul_gflops()
            steps = a.steps * (4 if stage == "pretrain_encoder" else 1)
            proc = subprocess.run([sys.executable, __file__, "--case", name, "--data", str(data), "--out",
                                   str(Path(tmp) / name), "--steps", str(steps), "--warmup", str(a.warmup)],
                                  capture_output=True, text=True, check=True)
            m = json.loads(proc.stdout.splitlines()[-1])
            peak = max(peak, matmul_gflops())
            rate, flops = m["samples_per_s"], m["flops_per_sample"]
            unit = "windows/s" if stage == "pretrain_encoder" else "samples/s"
            print(f"  {name}: {rate:.1f} {unit}" + (f", {rate * flops / 1e9:.1f} GFLOP/s" if flops else "")
                  + f", peak RSS {m['peak_rss_mb']:.0f} MB; matmul {peak:.1f} GFLOP/s")
            published = PUBLISHED.get(name)
            rows.append(Row("published sizes", f"{label}: {unit}", rate,
                            "the published system, measured side by side earlier" if published else "-",
                            published or 0, GOALS.get(name, "(figure)")))
            if flops:
                rows.append(Row("published sizes", f"{name}: GFLOP/s ({flops / 1e9:.3f} GFLOP per "
                                f"{'window' if stage == 'pretrain_encoder' else 'sample'})", rate * flops / 1e9,
                                "fp32 matmul GFLOP/s (2048x2048), same run", peak,
                                "MFU >= 0.18" if name == "ad" else "MFU (figure)"))
            rows.append(Row("published sizes", f"{name}: peak RSS, MB", m["peak_rss_mb"], "-", 0, "(figure)"))
    report(rows, "published_sizes")


if __name__ == "__main__":
    main()
