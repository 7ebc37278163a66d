"""PNG plots (matplotlib, no display needed)."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cccad.fs import atomic_write_bytes  # noqa: E402


def line_plot(path: Path, curves: dict[str, list[float]], title: str, xlabel: str, ylabel: str,
              hline: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
