"""`cccad report STUDY`: a study's results as one Markdown file with tables and PNG plots, in
runs/<study>/report/. It is the last step of `cccad local` and the last job of `cccad submit`.

It only reads what runs wrote (metrics.json, manifest.json, TensorBoard event files). A table cell
is the mean and 95% interval (Student t) over the seeds whose run is complete; the "seeds" column
says how many of the study's seeds that is, and the report names every run that is incomplete, stale
or not run, with the reason, so a mean over fewer seeds is never silent.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cccad.config import Config, dump_yaml
from cccad.fs import atomic_write_bytes, atomic_write_text
from cccad.plots import band_plot, bar_plot
from cccad.runinfo import MANIFEST, git_commit, read_metrics, run_hash, unreadable_metrics
from cccad.stages import STAGES
from cccad.stages.world import DECODED_FRAMES
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
        elif (t.run_dir / "log.txt").exists():
            state, why = "incomplete", f"started and did not finish; see {t.run_dir / 'log.txt'}"
        else:
            state, why = "not run", "not run yet"
        runs[t.name] = Run(t, state, why, metrics if state == "complete" else None)
    return list(runs.values())


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


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def stat_table(rows: list[tuple], columns: list[tuple], labels: list[str]) -> list[str]:
    """rows: (label cells, the row's runs over seeds[, view: metrics -> the dict the columns read]);
    columns: (header, dict -> value or None, digits)."""
    body = []
    for label, rs, *view in rows:
        done = [(view[0] if view else dict)(r.metrics) for r in rs if r.metrics is not None]
        values = [[v for m in done if (v := fn(m)) is not None] for _, fn, _ in columns]
        body.append(label + [f"{len(done)}/{len(rs)}"] + [cell(v, d) for v, (_, _, d) in zip(values, columns)])
    return markdown_table(labels + ["seeds"] + [h for h, _, _ in columns], body)


def mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple:
    """Seeds' curves on the first one's x (others interpolated): x, mean, mean -/+ 95% half-width."""
    x = curves[0][0]
    ys = np.stack([np.interp(x, cx, cy) for cx, cy in curves])
    mean, half = ys.mean(0), half_width(ys)
    return x, mean, mean - half, mean + half


def scalars(run_dir: Path, tag: str | None = None, suffix: str = "/loss") -> tuple[str, np.ndarray, np.ndarray] | None:
    """A TensorBoard scalar of a run: `tag`, or the first tag ending in `suffix` that is not a
    validation one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir():
        return None
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = tag if tag in tags else next((t for t in tags if t.endswith(suffix) and not t.startswith("val/")), None)
    if tag is None:
        return None
    events = acc.Scalars(tag)
    return tag, np.array([e.step for e in events], float), np.array([e.value for e in events], float)


class Report:
    """The report's sections, each from one or more stages' runs; each adds lines and plots."""

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

    def section(self, title: str, text: str = "") -> None:
        self.lines += [f"## {title}", ""] + ([text, ""] if text else [])

    # ------------------------------------------------------------------ Darkroom family
    def in_context(self) -> None:
        g = groups(self.runs, "evaluate")
        if not g:
            return
        self.section("In-context evaluation on held-out goals",
                     "Return of the last in-context episode divided by the optimal return, averaged over held-out "
                     "goals; mean ± 95% interval over seeds. No weight updates during evaluation.")
        self.lines += stat_table([([r[0].task.env, r[0].task.variant or ""], r) for r in g.values()], [
            ("final normalised return", lambda m: m["final_normalised_return"], 3),
            ("final return", lambda m: m["final_return"], 2),
            ("compressions per stream", lambda m: m["compressions"], 0)], ["env", "variant"])
        for env in dict.fromkeys(k[0] for k in g):
            curves = {}
            for key, rs in g.items():
                done = [r.metrics["normalised_return_curve"] for r in rs if key[0] == env and r.metrics]
                if done:
                    curves[key[1] or env] = mean_band([(np.arange(1, len(c) + 1), np.asarray(c)) for c in done])
            if curves:
                self.plot(f"in_context-{env}.png", lambda p: band_plot(
                    p, curves, f"in-context learning on held-out goals ({env})", "episode", "return / optimal",
                    hline=1.0), f"in-context curves, {env}")

    def pretraining(self) -> None:
        g = groups(self.runs, "pretrain_encoder")
        if not g:
            return
        self.section("Encoder pre-training (reconstruction, depth curriculum)",
                     "Correlation between reconstructed and true transitions on held-out streams at the end of "
                     "pre-training.")
        self.lines += stat_table([([k[0]], rs) for k, rs in g.items()], [
            ("validation correlation", lambda m: m.get("final_val_correlation"), 3),
            ("validation loss", lambda m: m.get("final_val_loss"), 4),
            ("first training loss", lambda m: m.get("initial_loss"), 4)], ["env"])

    def action_training(self) -> None:
        g = groups(self.runs, "train")
        if not g:
            return
        self.section("Action prediction (train)", "Cross-entropy of the next action on validation streams, "
                     "against the uniform guess (chance loss).")
        self.lines += stat_table([([k[0], k[1] or ""], rs) for k, rs in g.items()], [
            ("validation loss", lambda m: m.get("final_val_loss"), 4),
            ("chance loss", lambda m: m.get("chance_loss"), 4),
            ("samples/s", lambda m: m.get("samples_per_s"), 0)], ["env", "variant"])

    def goal_probe(self) -> None:
        g = groups(self.runs, "probe")
        if not g:
            return
        self.section("Goal-position probe", "Share of held-out streams whose goal cell a linear read-out of the "
                     "frozen representation gets exactly right, at the deepest window probed, against guessing "
                     "the mean goal.")
        kinds = sorted({k for rs in g.values() for r in rs if r.metrics
                        for k in r.metrics["per_depth"][deepest(r.metrics)]}, reverse=True)
        cols = [(f"accuracy, {k}", lambda m, k=k: m["per_depth"][deepest(m)].get(k, {}).get("accuracy"), 3) for k in kinds]
        cols.append(("mean-goal guess", lambda m: m["chance"]["accuracy"], 3))
        self.lines += stat_table([([k[0], k[1] or ""], rs) for k, rs in g.items()], cols, ["env", "variant"])
        bars, errs, floor = {}, {}, []
        for key, rs in g.items():
            for k in kinds:
                vals = [m["per_depth"][deepest(m)][k]["accuracy"] for r in rs if (m := r.metrics)
                        and k in m["per_depth"][deepest(m)]]
                if vals:
                    name = self.label(key[0], f"{key[1] or 'model'}, {k}")
                    bars[name], errs[name] = float(np.mean(vals)), float(half_width(np.asarray(vals)))
            floor += [r.metrics["chance"]["accuracy"] for r in rs if r.metrics]
        if bars:
            self.plot("goal_probe.png", lambda p: bar_plot(p, bars, "goal-position probe, deepest window",
                                                           "accuracy", float(np.mean(floor)), "mean-goal guess",
                                                           errs), "goal probe accuracy")

    # ------------------------------------------------------------------ Atari family
    def decoders(self) -> None:
        rows = [([k[0], name], rs) for stage, name in (("train_encoder_decoder", "encoder-decoder"),
                                                        ("train_jepa_decoder", "JEPA + decoder probe"))
                for k, rs in groups(self.runs, stage).items()]
        if not rows:
            return
        self.section("Next-frame decoding", "Mean absolute error (pixels in [0, 1]) of the decoded next frame "
                     "on held-out transitions, against two floors: copying the current frame, and the mean frame.")
        self.lines += stat_table(rows, [("decoder L1", lambda m: m["decoder_l1"], 4),
                                        ("copy-frame L1", lambda m: m["copy_frame_l1"], 4),
                                        ("mean-frame L1", lambda m: m["mean_frame_l1"], 4)], ["env", "model"])
        bars, errs, floor = {}, {}, []
        for (env, name), rs in rows:
            vals = [r.metrics["decoder_l1"] for r in rs if r.metrics]
            floor += [r.metrics["copy_frame_l1"] for r in rs if r.metrics]
            if vals:
                bar = self.label(env, name)
                bars[bar], errs[bar] = float(np.mean(vals)), float(half_width(np.asarray(vals)))
            first = next((r for r in rs if r.metrics and (r.task.run_dir / DECODED_FRAMES).is_file()), None)
            if first:  # the stage's own grid of real and decoded frames, from its first complete seed
                self.plot(f"frames-{first.task.stage}-{env}.png",
                          lambda p: atomic_write_bytes(p, (first.task.run_dir / DECODED_FRAMES).read_bytes()),
                          f"real and decoded next frames, {name}, {env} seed {first.task.seed}")
        if bars:
            self.plot("decoder_probe.png", lambda p: bar_plot(p, bars, "held-out next-frame L1", "L1",
                                                              float(np.mean(floor)), "copy current frame", errs),
                      "decoder L1")

    def reward_probes(self) -> None:
        rows = []
        for stage in ("train_reward_predictor", "train_dynamics_reward_predictor"):
            next_latent = "predicted" if "dynamics" in stage else "true"
            for key, rs in groups(self.runs, stage).items():
                encoders = dict.fromkeys(e for r in rs if r.metrics for e in r.metrics["per_encoder"])
                rows += [([key[0], enc, next_latent], rs, lambda m, e=enc: {**m, **m["per_encoder"].get(e, {})})
                         for enc in encoders or ["–"]]
        if not rows:
            return
        self.section("Reward probes", "MSE of the reward predicted from frozen latents (z_t and the true or the "
                     "predicted z_{t+1}) on held-out transitions, against always predicting the mean training "
                     "reward.")
        self.lines += stat_table(rows, [("reward MSE", lambda m: m.get("reward_mse"), 4),
                                        ("mean-reward floor", lambda m: m["mean_reward_mse"], 4),
                                        ("rewarded held-out transitions", lambda m: m.get("val_rewarded"), 0)],
                                 ["env", "encoder", "next latent"])
        bars, errs, floor = {}, {}, []
        for (env, enc, next_latent), rs, view in rows:
            done = [view(r.metrics) for r in rs if r.metrics]
            vals = np.asarray([m["reward_mse"] for m in done if "reward_mse" in m])
            floor += [m["mean_reward_mse"] for m in done]
            if len(vals):
                name = self.label(env, f"{enc}, {next_latent}")
                bars[name], errs[name] = float(vals.mean()), float(half_width(vals))
        if bars:
            self.plot("reward_probe.png", lambda p: bar_plot(p, bars, "held-out reward MSE", "MSE",
                                                             float(np.mean(floor)), "mean-reward floor", errs),
                      "reward probe MSE")

    def jepa_collapse(self) -> None:
        g = groups(self.runs, "train_jepa")
        if not g:
            return
        self.section("JEPA latent spread", "Spread of the online encoder's latents across a batch at the first "
                     "and last logged step: a spread falling toward zero is representation collapse.")
        self.lines += stat_table([([k[0]], rs) for k, rs in g.items()], [
            ("first spread", lambda m: m.get("first_latent_spread"), 4),
            ("final spread", lambda m: m.get("final_latent_spread"), 4),
            ("collapse warnings", lambda m: len(m.get("collapse_warnings") or []), 0)], ["env"])

    # ------------------------------------------------------------------ every family
    def collection(self) -> None:
        g = groups(self.runs, "collect")
        if not g:
            return
        self.section("Data collection", "Transitions recorded, and the return of the source algorithm "
                     "(Darkroom: the learner whose histories are distilled; Atari: the PPO agent).")
        self.lines += stat_table([([k[0]], rs) for k, rs in g.items()], [
            ("transitions", lambda m: m.get("transitions"), 0),
            ("source's last normalised return", lambda m: m.get("last_normalised_return"), 3),
            ("PPO agent's last return", lambda m: m.get("agent_last_return"), 1),
            ("transitions/s", lambda m: m.get("transitions_per_s"), 0)], ["env"])
        for (env, _), rs in g.items():
            curves = [c[1:] for r in rs if r.metrics and (c := scalars(r.task.run_dir, "collect/normalised_return",
                                                                        "return"))]
            if curves:
                self.plot(f"collect-{env}.png", lambda p: band_plot(
                    p, {env: mean_band(curves)}, f"source algorithm during collection ({env})", "episode or step",
                    "return"), f"collection return, {env}")

    def training_curves(self) -> None:
        trained = [s for s in STAGES if STAGES[s].TRAINS and groups(self.runs, s)]
        if not trained:
            return
        self.section("Training curves", "Training loss per logged step: mean over seeds, band the 95% interval "
                     "(none with one seed).")
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
        self.section("Runs", f"{len(self.runs) - len(problems)} of {len(self.runs)} runs complete."
                     + (" Not complete, so not in the tables above:" if problems else ""))
        self.lines += [f"- `{r.task.name}`: {r.state}: {r.why}" for r in problems] + ([""] if problems else [])
        commits = Counter()
        rows = []
        for r in self.runs:
            manifest = read_json(r.task.run_dir / MANIFEST) if r.metrics else None
            code = (manifest or {}).get("code", {})
            commit = (code.get("commit") or "?")[:12] + ("+dirty" if code.get("dirty") else "")
            if r.metrics:
                commits[commit] += 1
            rows.append([r.task.name, r.state, r.metrics["config_hash"] if r.metrics else "",
                         commit if r.metrics else "", f"{r.metrics['wall_seconds']:.0f}" if r.metrics else ""])
        now = git_commit()
        self.section("Provenance", f"Study `{base.study.name}` from `{study_file}`"
                     + (f" with overrides `{' '.join(overrides)}`" if overrides else "")
                     + "; its resolved config is `study.yaml` beside this report. Code of the complete runs: "
                     + (", ".join(f"`{c}` ({n} runs)" for c, n in commits.items()) or "none")
                     + f". Report written {time.strftime('%Y-%m-%d %H:%M:%S')} by `{(now.get('commit') or '?')[:12]}"
                     + ("+dirty" if now.get("dirty") else "") + "`.")
        self.lines += markdown_table(["run", "state", "config hash", "code", "seconds"], rows)


def deepest(metrics: dict) -> str:
    return max(metrics["per_depth"], key=int)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
    for part in (report.in_context, report.pretraining, report.action_training, report.goal_probe,
                 report.decoders, report.reward_probes, report.jepa_collapse, report.collection,
                 report.training_curves):
        part()
    report.runs_and_provenance(base, str(study_file), list(overrides))
    atomic_write_text(out / "study.yaml", dump_yaml(base))
    for old in out.glob("*.png"):
        if old.name not in report.plots:
            old.unlink()
    atomic_write_text(out / REPORT, "\n".join(report.lines))
    return out / REPORT
