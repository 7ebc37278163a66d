"""`cccad report STUDY`: a study's results as one Markdown file with tables and PNG plots, in
runs/<study>/report/. It is the last step of `cccad local` and the last job of `cccad submit`.

It only reads what runs wrote (metrics.json, manifest.json, TensorBoard event files). A table cell
is the mean and 95% interval (Student t) over the seeds whose run is complete; the "seeds" column
says how many of the study's seeds that is, and the report names every run that is incomplete, stale
or not run, with the reason, so a mean over fewer seeds is never silent.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from cccad.config import Config, dump_yaml
from cccad.fs import atomic_write_bytes, atomic_write_text, read_json
from cccad.plots import band_plot, bar_plot
from cccad.runinfo import LOG, MANIFEST, git_commit, last_end, read_metrics, run_hash, unreadable_metrics
from cccad.sections import Bars, Column, Curves, RunImage, Section
from cccad.stages import STAGES
from cccad.study import Task, build_tasks

REPORT = "report.md"
# two-sided 95% Student t quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def half_width(values: np.ndarray, axis: int = 0) -> np.ndarray | float:
    """Half the 95% interval of the mean over `axis` (0 for a single value)."""
    n = values.shape[axis]
    if n < 2:
        return np.zeros_like(values.mean(axis))
    t = T_975[n - 2] if n - 1 <= len(T_975) else 1.96
    return t * values.std(axis=axis, ddof=1) / np.sqrt(n)


@dataclass
class Run:
    task: Task
    state: str  # complete | blocked (a run it needs is not complete) | stale | incomplete | not run
    why: str
    metrics: dict | None

    @property
    def key(self) -> tuple:
        return self.task.env, self.task.variant


def gather(tasks: list[Task]) -> list[Run]:
    runs: dict[str, Run] = {}
    for t in tasks:
        metrics = read_metrics(t.run_dir)
        blockers = [n.name for n in t.needs if runs[n.name].state != "complete"]
        if blockers:  # (its own outputs, if any, may come from inputs that are gone)
            state, why = "blocked", f"needs {', '.join(blockers)}"
        elif t.complete():
            state, why = "complete", ""
        elif why := unreadable_metrics(t.run_dir):
            state = "incomplete"
        elif metrics is not None and metrics.get("config_hash") != run_hash(t.config, t.stage):
            state, why = "stale", f"its results are from another config (hash {metrics.get('config_hash')}); rerun the study"
        elif (t.run_dir / LOG).exists():
            ended = last_end(t.run_dir)
            state, why = "incomplete", f"started and did not finish; see {t.run_dir / LOG}" + (
                f" (its last attempt ended: {ended})" if ended else "")
        else:
            state, why = "not run", "not run yet"
        runs[t.name] = Run(t, state, why, metrics if state == "complete" else None)
    out = list(runs.values())
    for stage, mod in STAGES.items():  # measures relative to the other complete runs of the env
        if hasattr(mod, "across_runs"):
            for env in dict.fromkeys(r.task.env for r in out if r.task.stage == stage):
                done = [(r.task.config, r.metrics) for r in out if r.metrics and (r.task.stage, r.task.env) == (stage, env)]
                if done:
                    mod.across_runs(done)
    return out


def groups(runs: list[Run], stage: str) -> dict[tuple, list[Run]]:
    """A stage's runs by (env, variant), in study order."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.task.stage == stage:
            out.setdefault(r.key, []).append(r)
    return out


def cell(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    v = np.asarray(values, float)
    text = f"{v.mean():.{digits}f}"
    return text + (f" ± {half_width(v):.{digits}f}" if len(v) > 1 else "")


def comparable(column: Column, a: dict, b: dict) -> bool:
    """Two runs' metrics have the column's value, measured against the same basis (if it has one)."""
    return (None not in (column.value(a), column.value(b))
            and (column.basis is None or column.basis(a) == column.basis(b)))


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def stat_table(rows: list[tuple], columns: tuple[Column, ...], labels: list[str]) -> list[str]:
    """rows: (label cells, the row's runs over seeds, view: metrics -> the dict the columns read)."""
    body = []
    for label, rs, view in rows:
        done = [view(r.metrics) for r in rs if r.metrics is not None]
        values = [[v for m in done if (v := c.value(m)) is not None] for c in columns]
        body.append(label + [f"{len(done)}/{len(rs)}"] + [cell(v, c.digits) for v, c in zip(values, columns)])
    return markdown_table(labels + ["seeds"] + [c.header for c in columns], body)


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple:
    """Seeds' curves on the first one's x (others interpolated): x, mean, mean -/+ 95% half-width."""
    x = curves[0][0]
    ys = np.stack([np.interp(x, cx, cy) for cx, cy in curves])
    mean, half = ys.mean(0), half_width(ys)
    return x, mean, mean - half, mean + half


def scalars(run_dir: Path, tags: tuple[str, ...] = ()) -> tuple[str, np.ndarray, np.ndarray] | None:
    """A TensorBoard scalar of a run: the first of `tags` it has, or without `tags` its training
    loss (the first tag ending in /loss that is not a validation one; its action part, /action_loss,
    where a reconstruction loss is added to it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir():
        return None
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = acc.Tags()["scalars"]
    if not tags:
        training = [t for t in have if not t.startswith("val/")]
        tags = [t for t in training if t.endswith("/action_loss")] + [t for t in training if t.endswith("/loss")]
    tag = next((t for t in tags if t in have), None)
    if tag is None:
        return None
    events = acc.Scalars(tag)
    return tag, np.array([e.step for e in events], float), np.array([e.value for e in events], float)


class Report:
    """The report's sections: every stage's own (its `REPORT`), then the training curves, runs and
    provenance. Each adds lines and plots."""

    def __init__(self, runs: list[Run], out: Path):
        self.runs, self.out, self.lines, self.plots = runs, out, [], []
        self.several_envs = len({r.task.env for r in runs}) > 1

    def label(self, env: str, what: str) -> str:
        """A bar's label: the env only when the study has several."""
        return f"{what} ({env})" if self.several_envs else what

    def plot(self, name: str, draw, caption: str) -> None:
        draw(self.out / name)
        self.plots.append(name)
        self.lines += [f"![{caption}]({name})", ""]

    def heading(self, title: str, text: str = "") -> None:
        self.lines += [f"## {title}", ""] + ([text, ""] if text else [])

    def stage_sections(self) -> None:
        """Results first: stages in reverse dependency order; sections of several stages with the
        same title share one table."""
        parts: dict[str, list[tuple[str, Section]]] = {}
        for stage in reversed(STAGES):
            if groups(self.runs, stage):
                for section in STAGES[stage].REPORT:
                    parts.setdefault(section.title, []).append((stage, section))
        for title, shared in parts.items():
            self.section(shared)

    def section(self, parts: list[tuple[str, Section]]) -> None:
        """One table of every part's rows (label cells, runs over seeds, view of their metrics), then
        the plots: curves and bars over the rows, each part's run images."""
        first = parts[0][1]
        # a variant's runs get a variant cell after the env, or in a named row, its variant after the name
        named = first.views is None and len(first.labels) > 1
        by_variant = not named and any(v for stage, _ in parts for _, v in groups(self.runs, stage))
        rows = []
        for stage, sec in parts:
            for (env, variant), rs in groups(self.runs, stage).items():
                if sec.views is None:
                    name = f"{sec.row}, {variant}" if sec.row and variant else sec.row or variant or ""
                    rows.append(([env] + ([name] if named else [variant or "shared"] if by_variant else []), rs, dict))
                    continue
                keys = dict.fromkeys(k for r in rs if r.metrics for k in sec.views(r.metrics))
                for key in keys or [("–",) * (len(sec.labels) - 1)]:
                    rows.append(([env, *([variant or ""] if by_variant else []), *key], rs,
                                 lambda m, key=key, views=sec.views: views(m).get(key, {})))
        self.heading(first.title, first.text)
        labels = [first.labels[0], *(["variant"] if by_variant else []), *first.labels[1:]]
        self.lines += stat_table(rows, first.columns, labels)
        for plot in first.plots:
            if isinstance(plot, Curves):
                self.curves(plot, rows)
            elif isinstance(plot, Bars):
                self.bars(plot, rows)
        for stage, sec in parts:
            for image in (p for p in sec.plots if isinstance(p, RunImage)):
                self.run_images(stage, image)

    def curves(self, plot: Curves, rows: list) -> None:
        for env in dict.fromkeys(label[0] for label, _, _ in rows):
            lines = {}
            for label, rs, view in rows:
                done = [r for r in rs if r.metrics and label[0] == env]
                if plot.curve:
                    series = [(np.arange(1, len(c) + 1), np.asarray(c)) for r in done if (c := plot.curve(view(r.metrics)))]
                else:
                    series = [c[1:] for r in done if (c := scalars(r.task.run_dir, plot.tags))]
                if series:
                    lines[" ".join(label[1:]) or env] = mean_band(series)
            if lines:
                title = plot.title.format(env=env)
                self.plot(f"{plot.file}-{env}.png", lambda p: band_plot(p, lines, title, plot.xlabel, plot.ylabel,
                                                                      hline=plot.hline), title)

    def bars(self, plot: Bars, rows: list) -> None:
        bars, errs, floor = {}, {}, []
        for label, rs, view in rows:
            done = [view(r.metrics) for r in rs if r.metrics]
            floor += [plot.floor(m) for m in done if plot.floor(m) is not None]
            for name in dict.fromkeys(n for m in done for n in plot.values(m)):
                vals = np.asarray([v for m in done if (v := plot.values(m).get(name)) is not None], float)
                if len(vals):
                    bar = self.label(label[0], ", ".join(x for x in [*label[1:], name] if x) or "model")
                    bars[bar], errs[bar] = float(vals.mean()), float(half_width(vals))
        if bars:
            self.plot(f"{plot.file}.png", lambda p: bar_plot(p, bars, plot.title, plot.ylabel, float(np.mean(floor)),
                                                           plot.floor_label, errs), plot.title)

    def run_images(self, stage: str, image: RunImage) -> None:
        """The stage's own picture from each row's first complete seed."""
        for (env, variant), rs in groups(self.runs, stage).items():
            first = next((r for r in rs if r.metrics and (r.task.run_dir / image.file).is_file()), None)
            if first:
                name = f"{Path(image.file).stem}-{first.task.run_dir.name}.png"
                self.plot(name, lambda p: atomic_write_bytes(p, (first.task.run_dir / image.file).read_bytes()),
                          f"{image.caption}, {first.task.name}")

    def comparisons(self, pairs: list[tuple[str, str]]) -> None:
        """Each study comparison "A - B", per env, for each metric the per-variant stages compare
        (their COMPARED columns): A's value less B's, seed by seed, mean ± 95% interval."""
        rows = []
        for stage, mod in STAGES.items():
            for column in getattr(mod, "COMPARED", ()):
                for env in dict.fromkeys(r.task.env for r in self.runs if r.task.stage == stage):
                    ran = {r.task.variant for r in self.runs if (r.task.stage, r.task.env) == (stage, env)}
                    for a, b in pairs:
                        # a variant without its own run of a shared stage read the shared one (variant None)
                        of = {v: v if v in ran else None for v in (a, b)}
                        if of[a] == of[b]:
                            continue
                        done = {v: {r.task.seed: r.metrics for r in self.runs if r.metrics
                                    and (r.task.stage, r.task.env, r.task.variant) == (stage, env, of[v])} for v in (a, b)}
                        both = [(done[a][s], done[b][s]) for s in done[a] if s in done[b]]
                        diffs = [column.value(ma) - column.value(mb) for ma, mb in both if comparable(column, ma, mb)]
                        if both and not diffs:
                            continue  # a metric one of them has not (AD's latents), or measured against another threshold
                        rows.append([env, f"{a} - {b}", f"{column.header} ({stage})", str(len(diffs)),
                                     cell(diffs, column.digits)])
        if rows:
            self.heading("Comparisons between variants", "Per seed (the same data and evaluation streams), variant "
                         "A's value less B's; mean ± 95% interval over the seeds both completed. A metric one of them has "
                         "not (AD's latents), or measured against another threshold (steps to a threshold set per "
                         "model kind; none where some run learned nothing), is not compared.")
            self.lines += markdown_table(["env", "comparison", "metric", "seeds", "A - B"], rows)

    def training_curves(self) -> None:
        trained = [s for s in STAGES if STAGES[s].TRAINS and groups(self.runs, s)]
        if not trained:
            return
        self.heading("Training curves", "Training loss per logged step (with a reconstruction loss, its action "
                     "part): mean over seeds, band the 95% interval (none with one seed).")
        for stage in trained:
            by_env: dict[str, dict] = {}
            for key, rs in groups(self.runs, stage).items():
                curves = [c[1:] for r in rs if r.metrics and (c := scalars(r.task.run_dir))]
                if curves:
                    by_env.setdefault(key[0], {})[key[1] or stage] = mean_band(curves)
            for env, curves in by_env.items():
                self.plot(f"loss-{stage}-{env}.png", lambda p: band_plot(p, curves, f"{stage} ({env})", "step",
                                                                        "training loss"), f"{stage} loss, {env}")

    def runs_and_provenance(self, base: Config, study_file: str, overrides: list[str]) -> None:
        problems = [r for r in self.runs if r.state != "complete"]
        self.heading("Runs", f"{len(self.runs) - len(problems)} of {len(self.runs)} runs complete."
                     + (" Not complete, so not in the tables above:" if problems else ""))
        self.lines += [f"- `{r.task.name}`: {r.state}: {r.why}" for r in problems] + ([""] if problems else [])
        commits = Counter()
        rows, attempts = [], []
        for r in self.runs:
            manifest = read_json(r.task.run_dir / MANIFEST) if r.metrics else None
            code = (manifest or {}).get("code", {})
            commit = (code.get("commit") or "?")[:12] + ("+dirty" if code.get("dirty") else "")
            if r.metrics:
                commits[commit] += 1
                if (manifest or {}).get("started"):
                    attempts.append((manifest["started"], r.metrics["wall_seconds"]))
            rows.append([r.task.name, r.state, r.metrics["config_hash"] if r.metrics else "",
                         commit if r.metrics else "", f"{r.metrics['wall_seconds']:.0f}" if r.metrics else ""])
        now = git_commit()
        self.heading("Provenance", f"Study `{base.study.name}` from `{study_file}`"
                     + (f" with overrides `{' '.join(overrides)}`" if overrides else "")
                     + "; its resolved config is `study.yaml` beside this report. Code of the complete runs: "
                     + (", ".join(f"`{c}` ({n} runs)" for c, n in commits.items()) or "none")
                     + f". Report written {time.strftime('%Y-%m-%d %H:%M:%S')} by `{(now.get('commit') or '?')[:12]}"
                     + ("+dirty" if now.get("dirty") else "") + "`." + time_spent(attempts))
        self.lines += markdown_table(["run", "state", "config hash", "code", "seconds"], rows)


def time_spent(attempts: list[tuple[str, float]]) -> str:
    """The complete runs' time, from each one's start (manifest, "%Y-%m-%dT%H:%M:%S%z") and seconds:
    their sum, and the span from the first start to the last end. Each run's last attempt only:
    a run requeued or resumed counts from its last start."""
    if not attempts:
        return ""
    starts = [datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp() for started, _ in attempts]
    span = max(t + s for t, (_, s) in zip(starts, attempts)) - min(starts)
    return (f" Time: {sum(s for _, s in attempts) / 60:.0f} run-minutes in all, {span / 60:.0f} minutes from the "
            "first run's start to the last one's end (each run's last attempt; `seconds` below).")


def write_report(study_file: str, overrides: list[str] = (), runs_root: str = "runs") -> Path:
    """Write runs/<study>/report/ (report.md, study.yaml, PNGs) from the study's runs; returns the
    report's path. Each file is written whole (atomically); plots of an earlier report that this one
    does not draw are removed."""
    base, tasks = build_tasks(study_file, overrides, runs_root)
    out = Path(runs_root) / base.study.name / "report"
    report = Report(gather(tasks), out)
    report.lines += [f"# Study {base.study.name}", "",
                     "Mean ± 95% interval (Student t) over the seeds whose run is complete; `seeds` is complete "
                     "of planned. Runs that are not complete are named under Runs.", ""]
    report.stage_sections()
    report.comparisons(base.study.compared())
    report.training_curves()
    report.runs_and_provenance(base, str(study_file), list(overrides))
    atomic_write_text(out / "study.yaml", dump_yaml(base))
    for old in out.glob("*.png"):
        if old.name not in report.plots:
            old.unlink()
    atomic_write_text(out / REPORT, "\n".join(report.lines))
    return out / REPORT
