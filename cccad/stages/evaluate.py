"""Stage `evaluate`: in-context evaluation on held-out tasks (cccad/incontext.py), in the normal
condition and under the memory controls: CompressedAD without its latents and with another
goal's latents, AD with its window cut to its recent part. The long context keeps what the task
needs only if the normal condition clearly beats the controls."""
from __future__ import annotations

from pathlib import Path

from cccad.config import Config, pick
from cccad.incontext import evaluate as in_context
from cccad.models.policies import load_trained, require_trained, trained_by
from cccad.plots import line_plot
from cccad.runtime import device
from cccad.sections import Column, Curves, Section

NEEDS = ("train",)
INPUT_KEYS = {"train": ("inputs.train_run", ".")}
PER_VARIANT = True
FAMILIES = ("darkroom",)
TRAINS = False
CONTROL_NAMES = {"no_latents": "latents off", "foreign_latents": "another goal's latents",
                 "recent_only": "window cut to the recent part"}


def control(m: dict, name: str, key: str = "final_normalised_return"):
    return m.get("controls", {}).get(name, {}).get(key)


def minus(m: dict, name: str):
    """The normal condition's final normalised return less a control's (None without that control)."""
    other = control(m, name)
    return None if other is None else m["final_normalised_return"] - other


REPORT = (Section(
    "In-context evaluation on held-out goals", "Return of the last in-context episode divided by the optimal "
    "return, averaged over held-out goals (its standard error over the evaluation's streams beside it); then "
    "the memory controls, and the normal condition less each (computed per seed): mean ± 95% interval over "
    "seeds. No weight updates during evaluation.",
    (Column("final normalised return", lambda m: m["final_normalised_return"]),
     Column("stream s.e.", lambda m: m.get("final_normalised_return_se")),
     Column("latents off", lambda m: control(m, "no_latents")),
     Column("another goal's latents", lambda m: control(m, "foreign_latents")),
     Column("recent part only", lambda m: control(m, "recent_only")),
     Column("normal - latents off", lambda m: minus(m, "no_latents")),
     Column("normal - another goal's", lambda m: minus(m, "foreign_latents")),
     Column("normal - recent only", lambda m: minus(m, "recent_only")),
     Column("compressions per stream", lambda m: m["compressions"], 0)),
    plots=(Curves("in_context", "in-context learning on held-out goals ({env})", "episode", "return / optimal",
                  curve=lambda m: m["normalised_return_curve"], hline=1.0),)),)


# what a study's comparisons between variants compare (cccad/report.py)
COMPARED = (Column("final normalised return", lambda m: m["final_normalised_return"]),)


def summary(m: dict) -> str:
    controls = ", ".join(f"{CONTROL_NAMES[k]} {v['final_normalised_return']:.3f}" for k, v in m.get("controls", {}).items())
    return (f"last in-context episode return / optimal = {m['final_normalised_return']:.3f} "
            f"± {m['final_normalised_return_se'] or 0:.3f}" + (f" ({controls})" if controls else "")
            + (f", {m['compressions']} compressions" if m.get("compressions") else ""))


def decided_by(cfg: Config) -> dict:
    # the window stride decides AD's evaluations only, and at 1 it is what they always did: runs
    # from before the key keep their identity
    same = cfg.model.kind == "compressed_ad" or cfg.evaluate.window_stride == 1
    return {**trained_by(cfg), **pick(cfg, "evaluate", drop=("evaluate.window_stride",) if same else ())}


def preflight(cfg: Config) -> None:
    require_trained(cfg)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    return (Path(run_dir) / "in_context_return.png").is_file()


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    model = load_trained(cfg, cfg.inputs.train_run, device())
    result = in_context(model, cfg, device(), cfg.evaluate.streams_per_task)
    returns = result.pop("returns")
    curve = returns.mean(0)
    norm_curve = result["normalised_return_curve"]
    curves = {"normal": norm_curve, **{CONTROL_NAMES[k]: v["normalised_return_curve"] for k, v in result["controls"].items()}}
    line_plot(Path(run_dir) / "in_context_return.png", curves, f"in-context learning on held-out tasks ({cfg.env.name})",
              "episode", "return / optimal", hline=1.0)
    metrics = {"model": cfg.model.kind, "context_transitions": cfg.evaluate.episodes * cfg.env.horizon,
               "n_test_tasks": len(result["final_normalised_return_per_task"]), "episodes": cfg.evaluate.episodes,
               "streams": len(returns), "return_curve": curve.tolist(), "final_return": float(curve[-1]), **result}
    log(f"held-out tasks: {metrics['n_test_tasks']}, {summary(metrics)}")
    return metrics
