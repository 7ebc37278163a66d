"""`make bench`: run every benchmark, then write bench/results.md from their rows."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["collect_throughput.py", "train_throughput.py", "incontext_latency.py", "atari_collect_throughput.py",
           "worldmodel_train_throughput.py", "distributed_strategies.py", "submit_study.py", "published_sizes.py",
           "container.py"]


def main():
    rows = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / name)], check=True, cwd=HERE)
        print(f"   ({time.perf_counter() - t:.0f}s)")
        rows += json.loads((HERE / "out" / name.replace(".py", ".json")).read_text())
    lines = ["| benchmark | figure | value | baseline (same run) | baseline value | ratio | goal |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in rows:
        base = f"{r['baseline']:,.1f}" if r["baseline"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["baseline"] else "-"
        lines.append(f"| {r['benchmark']} | {r['figure']} | {r['value']:,.1f} | {r['baseline_name']} | {base} | {ratio} | {r['goal']} |")
    text = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
