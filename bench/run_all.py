"""`make bench`: run every benchmark, then write bench/results.md from their rows.
`python bench/run_all.py NAME.py ...`: run those only, their rows replacing their benchmarks' rows
of bench/results.md (the others' rows stay as the last whole run wrote them)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["collect_throughput.py", "train_throughput.py", "incontext_latency.py", "atari_collect_throughput.py",
           "worldmodel_train_throughput.py", "distributed_strategies.py", "submit_study.py", "published_sizes.py",
           "container.py", "full_study_cost.py", "ad_window_stride.py",
           "memory_key_door_cost.py"]
HEADER = ["| benchmark | figure | value | baseline (same run) | baseline value | ratio | goal |",
          "|---|---|---:|---|---:|---:|---|"]


def line(r: dict) -> str:
    base = f"{r['baseline']:,.1f}" if r["baseline"] else "-"
    ratio = f"{r['ratio']:.2f}" if r["baseline"] else "-"
    return f"| {r['benchmark']} | {r['figure']} | {r['value']:,.1f} | {r['baseline_name']} | {base} | {ratio} | {r['goal']} |"


def main():
    names = sys.argv[1:] or BENCHES
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"run_all.py: unknown benchmark {unknown[0]} (known: {', '.join(BENCHES)})")
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / name)], check=True, cwd=HERE)
        print(f"   ({time.perf_counter() - t:.0f}s)")
        rows += json.loads((HERE / "out" / name.replace(".py", ".json")).read_text())
    lines = [line(r) for r in rows]
    if sys.argv[1:]:  # the other benchmarks' rows as they were, these in place of their own (or after)
        redone = {r["benchmark"] for r in rows}
        kept = [row for row in (HERE / "results.md").read_text().splitlines()[2:]
                if row.split(" | ")[0].removeprefix("| ") not in redone]
        lines = kept + lines
    text = "\n".join(HEADER + lines) + "\n"
    (HERE / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
