"""DDP vs DeepSpeed ZeRO-2 vs ZeRO-3 on CPU with 2 processes (gloo): the same AD model (about
3M parameters), the same global batch and steps, one run each. Figures: training samples/s (the
loop's own count, global batch) and the peak resident memory of each process (ru_maxrss from
wait4, so it includes Python and torch themselves, about the same for all three). DDP is the
baseline. DeepSpeed's maintainers say ZeRO is for models too big for DDP: on a small model it
should cost speed and save little; this measures how much."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Row, report

SMOKE = ROOT / "configs" / "studies" / "smoke.yaml"
BUILD_OPS = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
MODEL = ["model.n_embd=256", "model.n_layer=4", "model.n_head=4", "model.context_len=60"]
TRAIN = ["train.steps=60", "train.batch_size=32", "train.log_every=20", "train.val_every=60", "train.val_batches=1",
         "train.checkpoint_every=1000", "train.num_warmup_steps=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(strategy: str, data: Path, out: Path) -> tuple[float, list[float]]:
    """samples/s and each process's peak RSS in MB."""
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "cccad", "run", "train", "-c", str(SMOKE), "--out", str(out),
                                       f"inputs.dataset={data}", f"train.strategy={strategy}", *MODEL, *TRAIN],
                                      env=env, stdout=open(out.parent / f"{strategy}.rank{rank}.log", "w"),
                                      stderr=subprocess.STDOUT))
    peaks = []
    for rank, p in enumerate(procs):
        _, status, usage = os.wait4(p.pid, 0)
        log = out.parent / f"{strategy}.rank{rank}.log"
        assert os.waitstatus_to_exitcode(status) == 0, f"{strategy}: process {rank} failed:\n{log.read_text()[-3000:]}"
        peaks.append(usage.ru_maxrss / 1024)
    return json.loads((out / "metrics.json").read_text())["samples_per_s"], peaks


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, "-m", "cccad", "run", "collect", "-c", str(SMOKE), "--out", str(tmp / "collect")],
                       check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        data = tmp / "collect" / "dataset"
        # DeepSpeed compiles its CPU communication op on first use: before timing (and apart from
        # the measured processes, whose peak memory would otherwise include the compiler's)
        subprocess.run([sys.executable, "-c", BUILD_OPS], check=True, capture_output=True)
        results = {s: run(s, data, tmp / s) for s in ("ddp", "zero2", "zero3")}
    for s, (rate, peaks) in results.items():
        print(f"{s}: {rate:,.1f} samples/s; peak RSS per process {', '.join(f'{m:,.0f} MB' for m in peaks)}")
    ddp_rate, ddp_peaks = results["ddp"]
    rows = []
    for s in ("zero2", "zero3"):
        rate, peaks = results[s]
        rows += [Row(f"2-process training, {s} vs DDP", "samples/s", rate, "DDP samples/s", ddp_rate,
                     "measure (ZeRO is for models too big for DDP)"),
                 Row(f"2-process training, {s} vs DDP", "peak RSS per process, MB (max of 2)", max(peaks),
                     "DDP peak RSS per process, MB", max(ddp_peaks), "measure")]
    report(rows, "distributed_strategies")


if __name__ == "__main__":
    main()
