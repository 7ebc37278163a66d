"""Shared by the benchmarks: each prints its figures and returns rows for bench/results.md."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"


@dataclass
class Row:
    benchmark: str
    figure: str  # what was measured, with units
    value: float
    baseline_name: str
    baseline: float
    goal: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matmul throughput, measured now (the MFU denominator)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def report(rows: list[Row], name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for r in rows:
        print(f"{r.benchmark}: {r.figure} = {r.value:,.1f} | {r.baseline_name} = {r.baseline:,.1f} | "
              f"ratio {r.ratio:.2f} | goal: {r.goal}")
    (OUT / f"{name}.json").write_text(json.dumps([asdict(r) | {"ratio": r.ratio} for r in rows], indent=1))


def steady_rate(history: list[dict], warmup: int, steps: int) -> float:
    """Samples/s between the logged step `warmup` and step `steps` of a training history (each
    row's samples_per_s is since the loop started)."""
    rows = {r["step"]: r for r in history}
    first, last = rows[warmup], rows[steps]
    return (steps - warmup) / (steps / last["samples_per_s"] - warmup / first["samples_per_s"])
