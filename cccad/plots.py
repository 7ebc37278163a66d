"""PNG plots (matplotlib, no display needed; imported on first use, as most processes draw nothing
and it costs most of a second to import)."""
from __future__ import annotations

import io
from pathlib import Path

import functools

import numpy as np

from cccad.fs import atomic_write_bytes


@functools.cache
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def line_plot(path: Path, curves: dict[str, list[float]], title: str, xlabel: str, ylabel: str,
              hline: float | None = None) -> None:
    plt = pyplot()
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
    _save(fig, path)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def bar_plot(path: Path, bars: dict[str, float], title: str, ylabel: str, hline: float | None = None,
             hline_label: str = "", errors: dict[str, float] | None = None) -> None:
    """Bars, with error bars where `errors` gives a half-width, and a dashed reference line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars)), 4), dpi=100)
    yerr = [(errors or {}).get(k) or 0 for k in bars] if errors else None
    ax.bar(list(bars), list(bars.values()), yerr=yerr, capsize=4, color="tab:blue")
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=hline_label)
        ax.legend()
    ax.set(title=title, ylabel=ylabel)
    if len(bars) > 3:
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    _save(fig, path)


def band_plot(path: Path, curves: dict[str, tuple], title: str, xlabel: str, ylabel: str,
              hline: float | None = None) -> None:
    """One line per label with a shaded band: curves[label] = (x, mean, low, high)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, (x, mean, low, high) in curves.items():
        (line,) = ax.plot(x, mean, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def frame_grid(path: Path, rows: dict[str, np.ndarray], title: str) -> None:
    """One row of frames per entry (label: (n, C, H, W) floats in [0, 1] or uint8)."""
    n = min(len(v) for v in rows.values())
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows) + 0.4), dpi=100, squeeze=False)
    for r, (label, frames) in enumerate(rows.items()):
        for i in range(n):
            img = np.asarray(frames[i])
            img = img / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
            ax = axes[r][i]
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
