"""What a study (by default the full one, configs/studies/full.yaml; `--study` another: its envs x
seeds x variants, at its own sizes and budgets) costs: each stage's work, its rate measured here
through the real stage code at those sizes (one process, one thread: a cluster task's share), and
the CPU core-hours they make.

Training stages (pre-training, train per variant, probe) are timed over a few steps after a
warm-up on the study's first env's data and scaled to their configured steps; collection over a
slice of its tasks; evaluation over its first episodes (a window's worth of context, so AD's
attention is at its full length) with every held-out task and up to a batch of streams, scaled to
its episodes and streams. A training's in-context evaluations (train.eval_every) are costed as the
evaluation's normal condition (its share of the conditions timed) at train.eval_streams_per_task
streams. Models are untrained for evaluation: its cost does not depend on the weights.

GPU hours are not measured (there is no GPU here); they are estimated from the same work, stated
with the assumption: these models are small (about a million weights), so a GPU step is bound by
its kernel launches rather than its FLOPs, and a step is taken to cost the larger of
GPU_STEP_S and its FLOPs at GPU_FLOPS."""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, Row, report, steady_rate

from cccad.config import Config, config_hash, load_config
from cccad.data.collected import KIND, dataset_config
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetWriter
from cccad.envs.darkroom import DarkroomTasks
from cccad.incontext import evaluate
from cccad.models.policies import PRETRAINED_FILE, build_model
from cccad.stages import STAGES
from cccad.study import env_layer, task_layers

STUDY = ROOT / "configs" / "studies" / "full.yaml"
GPU_STEP_S = 0.010  # an optimiser step of a small transformer, launch-bound (forward, backward, AdamW)
GPU_EVAL_STEP_S = 0.003  # one in-context step of a batch of streams (a forward with a KV cache)
GPU_FLOPS = 50e12  # sustained bf16 FLOP/s where FLOPs do bound a step (about a sixth of an A100's peak)


def study_config(study_file: Path, env: str, variant: str | None, overrides: list[str]) -> Config:
    """The config of the study's task for `env`, its first seed and `variant` (as the study runner layers it)."""
    study = load_config(study_file).study
    extra = task_layers(study_file, study.variants, env_layer(study_file, env), study.seeds[0], variant)
    return load_config(study_file, overrides, extra=extra)


def timed_training(stage: str, cfg_of, steps: int, warmup: int, out: Path) -> tuple[float, dict]:
    short = [f"train.log_every={warmup}", f"train.val_every={warmup}", f"train.checkpoint_every={steps}",
             "train.num_warmup_steps=0", "train.eval_every=0"]
    if stage == "pretrain_encoder":
        short += [f"pretrain.pretrain_steps={steps}", "pretrain.pretrain_warmup_steps=0",
                  f"pretrain.curriculum=[{{steps: {steps}, depths: [1, 2, 3]}}]"]
    elif stage == "probe":
        short += [f"probe.steps={steps}"]
    else:
        short += [f"train.steps={steps}"]
    cfg = cfg_of(short)
    torch.manual_seed(0)
    result = STAGES[stage].run(cfg, out, log=lambda *_: None)
    return steady_rate(result["history"], warmup, steps), result


def main(argv: list[str] | None = None, name: str = "full_study_cost"):
    p = argparse.ArgumentParser()
    p.add_argument("--study", type=Path, default=STUDY)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--eval-transitions", type=int, default=240, help="in-context steps timed per stream")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    study = load_config(a.study).study
    config = lambda env, variant, overrides: study_config(a.study, env, variant, overrides)  # noqa: E731
    what = "full study cost" if a.study.resolve() == STUDY else f"{study.name} study cost"
    n_runs = len(study.seeds)
    rows, cpu_hours, gpu_hours = [], 0.0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the training stages' models do not depend on the env: timed once, on the first env's data
        first = study.envs[0]
        cfg = config(first, None, ["collect.streams_per_task=2"])
        expect = dataset_config(cfg)
        writer = DatasetWriter(tmp / "dataset", KIND["darkroom"], expect, config_hash(expect))
        stats = collect_histories(cfg, writer)
        writer.commit({"transitions": stats["transitions"]}, stats)
        data = [f"inputs.dataset={tmp / 'dataset'}", "collect.streams_per_task=2"]
        per_run: dict[str, tuple[float, float]] = {}  # what: (CPU s, GPU s) of one run at full size

        rate, _ = timed_training("pretrain_encoder", lambda o: config(first, None, data + o),
                                 a.steps, a.warmup, tmp / "pretrain")
        pre = load_config(a.study).pretrain
        per_run["pretrain_encoder"] = (pre.pretrain_steps * pre.pretrain_batch_size / rate,
                                       pre.pretrain_steps * GPU_STEP_S)
        print(f"  pretrain_encoder: {rate:.1f} windows/s")
        encoder = tmp / "pretrain" / PRETRAINED_FILE
        trained = {}
        for variant in study.variants:
            cfg_of = lambda o, v=variant: config(  # noqa: E731
                first, v, data + o + ([f"inputs.pretrained_encoder_path={encoder}"]
                                           if study.variants[v].get("inputs.pretrained_encoder_path") else []))
            rate, result = timed_training("train", cfg_of, a.steps, a.warmup, tmp / variant)
            full = cfg_of([])
            m = full.model
            tokens = m.context_len if m.kind == "ad" else m.n_latent + m.recent_len
            step_flops = result["flops_per_token"] * tokens * full.train.batch_size
            per_run[f"train {variant}"] = (full.train.steps * full.train.batch_size / rate,
                                          full.train.steps * max(GPU_STEP_S, step_flops / GPU_FLOPS))
            trained[variant] = tmp / variant
            print(f"  train {variant}: {rate:.1f} samples/s")
            rate, _ = timed_training("probe", lambda o, v=variant: cfg_of(o + [f"inputs.train_run={tmp / v}"]),
                                     a.steps, a.warmup, tmp / f"probe-{variant}")
            per_run[f"probe {variant}"] = (full.probe.steps * full.probe.batch_size / rate, full.probe.steps * GPU_STEP_S)
            print(f"  probe {variant}: {rate:.1f} samples/s")

        total_cpu = total_gpu = 0.0
        for env in study.envs:
            cfg = config(env, None, [])
            tasks = DarkroomTasks(cfg.env)
            n_train, n_test = len(tasks.train_ids), len(tasks.test_ids)
            transitions = n_train * cfg.collect.streams_per_task * cfg.collect.episodes * cfg.env.horizon
            # collection: timed on a slice of the tasks (the batched learner's rate per transition)
            part = config(env, None, [f"env.train_tasks={min(n_train, 40)}"])
            expect = dataset_config(part)
            writer = DatasetWriter(tmp / f"collect-{env}", KIND["darkroom"], expect, config_hash(expect))
            t = time.perf_counter()
            stats = collect_histories(part, writer)
            collect_s = (time.perf_counter() - t) * transitions / stats["transitions"]
            writer.commit({"transitions": stats["transitions"]}, stats)
            env_cpu = {"collect": collect_s, **{k: v[0] for k, v in per_run.items()}}
            env_gpu = {"collect": collect_s, **{k: v[1] for k, v in per_run.items()}}
            # evaluation: every held-out task x stream, the first episodes, scaled to all of them
            episodes = max(1, math.ceil(a.eval_transitions / cfg.env.horizon))
            # (streams are stepped a batch after another: where they fill more than a batch, a batch's
            # worth is timed and scaled to them all)
            streams = cfg.evaluate.streams_per_task
            timed = max(1, min(streams, cfg.evaluate.batch_size // n_test))
            for variant in study.variants:
                ev = config(env, variant, [f"evaluate.episodes={episodes}"])
                model = build_model(ev).eval()
                t = time.perf_counter()
                out = evaluate(model, ev, torch.device("cpu"), timed)
                seconds = (time.perf_counter() - t) * cfg.evaluate.episodes / episodes * streams / timed
                conditions = 1 + len(out.get("controls", {}))
                batches = math.ceil(n_test * streams / ev.evaluate.batch_size)
                env_cpu[f"evaluate {variant}"] = seconds
                env_gpu[f"evaluate {variant}"] = (conditions * batches * cfg.evaluate.episodes * cfg.env.horizon
                                                  * GPU_EVAL_STEP_S)
                tr = ev.train
                if n_evals := tr.steps // tr.eval_every if tr.eval_every else 0:  # in-training evaluations
                    share = tr.eval_streams_per_task / streams / conditions
                    eval_batches = math.ceil(n_test * tr.eval_streams_per_task / ev.evaluate.batch_size)
                    env_cpu[f"train {variant}"] += n_evals * seconds * share
                    env_gpu[f"train {variant}"] += (n_evals * eval_batches * cfg.evaluate.episodes * cfg.env.horizon
                                                    * GPU_EVAL_STEP_S)
                    print(f"  train {variant} on {env}: {n_evals} in-context evaluations, "
                          f"{n_evals * seconds * share / 60:.1f} min")
                print(f"  evaluate {variant} on {env}: {seconds / 60:.1f} min per run "
                      f"({n_test} tasks x {streams} streams x {cfg.evaluate.episodes} episodes, "
                      f"{conditions} conditions)")
            env_cpu_h = n_runs * sum(env_cpu.values()) / 3600
            env_gpu_h = n_runs * sum(env_gpu.values()) / 3600
            total_cpu += env_cpu_h
            total_gpu += env_gpu_h
            print(f"  {env}: {n_train} training tasks, {transitions:,} transitions per seed; {n_runs} seeds: "
                  f"{env_cpu_h:,.1f} CPU core-hours, about {env_gpu_h:.1f} GPU hours (estimate). Per seed, CPU h: "
                  + ", ".join(f"{k} {v / 3600:.1f}" for k, v in env_cpu.items()))
            rows += [Row(what, f"{env}: CPU core-hours, {n_runs} seeds, every stage and variant "
                         f"(measured rates x configured work)", env_cpu_h, "-", 0, "(figure)"),
                     Row(what, f"{env}: GPU hours, {n_runs} seeds (estimate: launch-bound steps)",
                         env_gpu_h, "-", 0, "(figure)")]
        rows += [Row(what, "whole study: CPU core-hours", total_cpu, "-", 0, "(figure)"),
                 Row(what, "whole study: GPU hours (estimate)", total_gpu, "-", 0, "(figure)")]
    report(rows, name)


if __name__ == "__main__":
    main()
