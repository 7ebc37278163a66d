"""How a stage shows its results: a line per run after `cccad local` (a stage's `summary(metrics)`)
and its part of the study report (a stage's `REPORT`: sections of this module's kinds). Stages
declare them; cccad/report.py draws every stage's, so the report and the command line know no
stage by name.

A `Section` is a titled table with one row per (env, variant), or per view of a run's metrics
(`views`), each cell the mean and 95% interval over seeds of a column's value; sections of
several stages with the same title share one table (both next-frame decoders, say). Its plots:
`Curves` (a curve per row, mean over seeds with a band), `Bars` (a bar per row beside a floor),
`RunImage` (a run's own picture).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict], Any]  # a run's metrics (or view of them) -> a number, or None
    digits: int = 3
    # what the value is measured against (a threshold): runs are compared on it only where that is the same
    basis: Callable[[dict], Any] | None = None


@dataclass(frozen=True)
class Curves:
    """A plot per env, `{file}-{env}.png`: a line per row, the mean over seeds of a curve from each
    run's metrics (`curve`) or TensorBoard scalars (the first of `tags` a run has), with a band."""
    file: str
    title: str  # "{env}" is replaced by the env
    xlabel: str
    ylabel: str
    curve: Callable[[dict], list[float]] | None = None
    tags: tuple[str, ...] = ()
    hline: float | None = None


@dataclass(frozen=True)
class Bars:
    """One plot, `{file}.png`: a bar per row and name of `values` (mean ± 95% interval over seeds),
    beside a dashed line at the mean `floor` of the runs."""
    file: str
    title: str
    ylabel: str
    values: Callable[[dict], dict[str, float | None]]  # a run's metrics -> {bar name ("": the row's own): value}
    floor: Callable[[dict], float]
    floor_label: str


@dataclass(frozen=True)
class RunImage:
    """A picture each run draws (`file` in its folder), shown from a row's first complete seed."""
    file: str
    caption: str


@dataclass(frozen=True)
class Section:
    title: str
    text: str
    columns: tuple[Column, ...]
    labels: tuple[str, ...] = ("env", "variant")  # headers of the label cells: the env, then the variant
    row: str | None = None  # the second label cell when it is not the variant (e.g. the model's name)
    # a run's metrics as several rows: {label cells after the env: the dict the columns read}
    views: Callable[[dict], dict[tuple[str, ...], dict]] | None = None
    plots: tuple[Curves | Bars | RunImage, ...] = ()
