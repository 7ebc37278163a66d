"""The one training loop, shared by every training stage.

A stage hands over an `Objective`: a model, a loss, and a batch function. The global batch of step
k is drawn from an RNG seeded with (seed, k) and each process loads only its slice of it, so the
data position is the step (resuming needs no sampler state) and the data seen does not depend on
the number of processes. Checkpoints (cccad/checkpoint.py) hold model, optimizer, scheduler, step
and RNG states. SIGTERM or SIGUSR2 (SLURM's requeue, preemption and time-limit signals) end the
current step, save a checkpoint there and raise `Interrupted`: the rerun resumes from that step
exactly.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import InitProcessGroupKwargs
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cccad.checkpoint import CKPT_DIR, FINAL_MODEL, TrainingCheckpoints
from cccad.config import HISTORY_ONLY, RETIRED, Config, ConfigError, TrainConfig, config_hash
from cccad.fs import atomic_torch_save


def resume_hash(decided_by: dict) -> str:
    """A checkpoint resumes only under the same config as far as it decides the weights (the
    stage's `decided_by`, less the keys that decide only the logged history)."""
    d = {section: {k: v for k, v in keys.items() if f"{section}.{k}" not in HISTORY_ONLY + tuple(RETIRED)}
         if isinstance(keys, dict) else keys for section, keys in decided_by.items()}
    return config_hash({section: keys for section, keys in d.items() if keys != {}})


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint. The process exits with `exit_code`:
    EXIT_INTERRUPTED (a scheduler's SIGTERM or SIGUSR2: requeue it) or EXIT_CTRL_C (SIGINT)."""

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.exit_code = EXIT_CTRL_C if signum == signal.SIGINT else EXIT_INTERRUPTED


class PeerLost(RuntimeError):
    """A collective operation of a several-process run failed: another process died, hung or was
    cut off (after `train.collective_timeout_s` at the latest)."""


# how gloo and NCCL word a collective that failed because a peer is gone or silent
LOST_PEER = re.compile(r"timed out|timeout|connection (closed|reset|refused)|broken pipe|peer|gloo|nccl", re.I)


@contextlib.contextmanager
def lost_peers(world: int, timeout_s: int, rank: int):
    """Inside: a failed collective of a several-process run is raised as PeerLost, one line."""
    try:
        yield
    except RuntimeError as e:
        if world > 1 and LOST_PEER.search(str(e)):
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            raise PeerLost(f"process {rank} of {world}: a collective operation failed, another process of this run "
                           f"is lost or hung (train.collective_timeout_s={timeout_s}): {first[:200]}") from None
        raise


class Diverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: training stops there (nothing past
    the last checkpoint is written) instead of going on with weights that mean nothing."""


class OtherProcessDone(Exception):
    """Raised in every process but the main one when training ends: only the main process goes
    on past training (scoring, plots, metrics); the others exit 0."""


EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later
EXIT_CTRL_C = 130  # the shell's code for a process ended by SIGINT
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


@contextlib.contextmanager
def stop_signals():
    """While inside: STOP_SIGNALS are recorded in the yielded dict (key "signal") instead of
    killing the process, so the loop can stop at a step boundary."""
    caught = {"signal": None}
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield caught
        return

    def record(signum, frame):
        caught["signal"] = signum

    previous = {s: signal.signal(s, record) for s in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Objective:
    """What a stage trains. `loss(model, batch) -> (loss, {name: scalar tensor})`;
    `batch(rng, size, part, step)` draws the indices of step's batch of `size` samples from `rng`
    and loads the samples `part` (a slice) of it; `val_batch(rng, size, i)` draws validation
    batch i (or None: no validation) from the fixed `rng` the loop gives it. `decided_by`: the config subset that decides the weights (resume refuses others).
    Scalars go to TensorBoard as `<tag>/loss`, `<tag>/<stat>`, `lr`.
    `final(model, step)` gives the final files, {path in the run folder: contents} (default:
    weights, step and config in model.pt). `frozen`: nets the loss reads but never trains (moved
    to the device, kept in eval mode without gradients, not checkpointed). `after_step(model,
    step)` runs after each optimizer step (e.g. an EMA target update; state it changes must live
    in `model` to be checkpointed). `on_log(row, log)` sees each logged row (e.g. to warn).
    `evaluate(model)` scores the model (in eval mode) every `train.eval_every` steps, into the row."""
    model: torch.nn.Module
    loss: Callable
    batch: Callable[[np.random.Generator, int, slice, int], dict]
    decided_by: dict
    val_batch: Callable[[np.random.Generator, int, int], dict] | None = None
    tag: str = "train"
    final: Callable[[torch.nn.Module, int], dict[str, dict]] | None = None
    frozen: torch.nn.Module | None = None
    after_step: Callable[[torch.nn.Module, int], None] | None = None
    on_log: Callable[[dict, Callable], None] | None = None
    evaluate: Callable[[torch.nn.Module], dict] | None = None


def lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.num_warmup_steps:
            return (step + 1) / cfg.num_warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.num_warmup_steps) / max(1, cfg.steps - cfg.num_warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


ZERO_STAGE = {"zero2": 2, "zero3": 3}


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """One process, or one per device/CPU share (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the
    environment: SLURM tasks or accelerate launch): DDP, or DeepSpeed ZeRO-2/3 (`train.strategy`).
    Process groups use NCCL on GPUs, gloo on CPUs."""
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "fp32"
    plugin = None
    if cfg.strategy in ZERO_STAGE:
        plugin = DeepSpeedPlugin(zero_stage=ZERO_STAGE[cfg.strategy], gradient_clipping=cfg.grad_clip,
                                 zero3_save_16bit_model=True)  # ZeRO-3: gather the full weights to save them
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, deepspeed_plugin=plugin,
                              cpu=several and not gpu and plugin is None,  # accelerate's multi-CPU (DDP on gloo)
                              kwargs_handlers=[InitProcessGroupKwargs(backend="nccl" if gpu else "gloo",
                                                                     timeout=timedelta(seconds=cfg.collective_timeout_s))]
                              if several else [])
    if plugin is not None:  # no DataLoader goes through prepare(), so DeepSpeed is told the batch here
        if cfg.batch_size % accelerator.num_processes:
            raise ConfigError(f"train.batch_size: {cfg.batch_size} is not divisible by the {accelerator.num_processes} processes")
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = \
            cfg.batch_size // accelerator.num_processes
    return accelerator


def non_finite(loss: torch.Tensor, grad_norm: torch.Tensor | None) -> str | None:
    """What is NaN or infinite this step ("loss nan", "gradient norm inf"), or None."""
    for name, value in (("loss", loss), ("gradient norm", grad_norm)):
        if value is not None and not math.isfinite(v := float(value.detach() if torch.is_tensor(value) else value)):
            return f"{name} {v}"
    return None


def to_device(batch: dict, device) -> dict:
    """A batch's tensors on `device` (its other values as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def adamw(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, with weight decay on parameters of two or more dimensions only (not biases or norms)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in trained if p.dim() >= 2], "weight_decay": tc.weight_decay},
                              {"params": [p for p in trained if p.dim() < 2], "weight_decay": 0.0}],
                             lr=tc.lr, betas=tuple(tc.betas))


class StepLog:
    """Every `train.log_every` steps: a row of the loss, lr, speed and the objective's stats
    (averaged over processes), with the validation loss every `val_every`; to the history,
    TensorBoard (main process), the progress bar or, without a terminal, a line per validation."""

    def __init__(self, run_dir: Path, cfg: Config, objective: Objective, accelerator: Accelerator, start: int, log):
        self.tc, self.seed, self.objective, self.accelerator, self.log = cfg.train, cfg.seed, objective, accelerator, log
        self.writer = SummaryWriter(run_dir / "tb", purge_step=start or None) if accelerator.is_main_process else None
        self.bar = tqdm(total=self.tc.steps, initial=start, disable=not sys.stderr.isatty(), desc=run_dir.name)
        self.t0, self.samples = time.perf_counter(), 0

    def mean(self, t: torch.Tensor) -> float:
        """The mean over processes (each has its part of the batch)."""
        return (self.accelerator.reduce(t.detach().float(), "mean") if self.accelerator.num_processes > 1 else t).item()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true in any process."""
        if self.accelerator.num_processes == 1:
            return list(flags)
        summed = self.accelerator.reduce(torch.tensor([float(f) for f in flags], device=self.accelerator.device), "sum")
        return [v > 0 for v in summed.tolist()]

    def step(self, done: int, model, loss, stats: dict, grad_norm, lr: float) -> dict | None:
        """Count step `done`; its row if it is logged."""
        self.samples += self.tc.batch_size
        self.bar.update(1)
        if not (done % self.tc.log_every == 0 or done in (1, self.tc.steps)):
            return None
        rate = self.samples / (time.perf_counter() - self.t0)
        row = {"step": done, "loss": self.mean(loss), "lr": lr, "samples_per_s": rate,
               **{k: self.mean(v) for k, v in stats.items()}}
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        if done % self.tc.val_every == 0 or done == self.tc.steps:
            row.update(self.validate(model))
        if self.objective.evaluate and self.tc.eval_every and (done % self.tc.eval_every == 0 or done == self.tc.steps):
            model.eval()
            row.update(self.objective.evaluate(self.accelerator.unwrap_model(model)))
            model.train()
        if self.objective.on_log:
            self.objective.on_log(row, self.log)
        if self.writer:
            tag = self.objective.tag
            for k, v in row.items():
                if k != "step" and v is not None:
                    name = "lr" if k == "lr" else f"val/{k[4:]}" if k.startswith("val_") else f"{tag}/{k}"
                    self.writer.add_scalar(name, v, done)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}")
        if self.bar.disable and "val_loss" in row:
            self.log(f"step {done}/{self.tc.steps} loss {row['loss']:.4f} val_loss {row['val_loss']} "
                     f"lr {lr:.2e} {rate:.1f} samples/s")
        return row

    def validate(self, model) -> dict:
        """Mean loss and stats over the fixed validation batches (each stat over the batches that
        have it): {"val_loss": .., "val_<stat>": ..}."""
        if self.objective.val_batch is None:
            return {"val_loss": None}
        model.eval()
        rows = []
        with torch.no_grad(), self.accelerator.autocast():
            for i in range(self.tc.val_batches):
                batch = self.objective.val_batch(np.random.default_rng([self.seed, 2, i]), self.tc.batch_size, i)
                loss, stats = self.objective.loss(model, to_device(batch, self.accelerator.device))
                rows.append({"val_loss": loss.item(), **{f"val_{k}": v.item() for k, v in stats.items()}})
        model.train()
        # (a stat some batches lack, e.g. a loss on compressed chunks a window of depth 0 has none of)
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in dict.fromkeys(k for r in rows for k in r)}

    def close(self) -> float:
        """Samples per second over this process's steps."""
        self.bar.close()
        if self.writer:
            self.writer.close()
        return self.samples / (time.perf_counter() - self.t0) if self.samples else None


def fit(run_dir: Path, cfg: Config, objective: Objective, log=print) -> dict:
    """Train `objective` for cfg.train.steps, resuming from the latest checkpoint in run_dir."""
    tc, run_dir = cfg.train, Path(run_dir)
    accelerator = make_accelerator(tc)
    world, rank, zero = accelerator.num_processes, accelerator.process_index, ZERO_STAGE.get(tc.strategy)
    if zero == 3 and (objective.after_step or (objective.evaluate and tc.eval_every)):
        raise ConfigError("train.strategy: zero3 cannot run this stage's after-step update or in-training "
                          "evaluation (they read whole parameters, which ZeRO-3 splits across processes); use ddp "
                          "or zero2")
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size: {tc.batch_size} is not divisible by the {world} processes")
    torch.manual_seed(cfg.seed)
    model = objective.model
    optimizer = adamw(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    checkpoints = TrainingCheckpoints(run_dir, resume_hash(objective.decided_by), cfg.to_dict(), tc.strategy, zero,
                                      world, rank, tc.keep_checkpoints)
    start, history = checkpoints.resume(model, optimizer, scheduler, log, accelerator.wait_for_everyone)
    # the scheduler stays unwrapped: accelerate would step it once per process, changing the
    # schedule with the process count; ours follows the optimizer step count only
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpoints.resume_partition(model)
    raw_model = accelerator.unwrap_model(model)
    if zero == 3:
        held = sum(p.ds_tensor.numel() for p in raw_model.parameters())
        log(f"ZeRO-3: process {rank} of {world} holds {held:,} of {sum(p.ds_numel for p in raw_model.parameters()):,} "
            "parameter values")
    if objective.frozen is not None:
        objective.frozen.to(accelerator.device).eval().requires_grad_(False)
    steps = StepLog(run_dir, cfg, objective, accelerator, start, log)
    part = slice(rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world)

    model.train()
    with stop_signals() as caught, lost_peers(world, tc.collective_timeout_s, rank):
        for step in range(start, tc.steps):
            batch = to_device(objective.batch(np.random.default_rng([cfg.seed, step]), tc.batch_size, part, step),
                          accelerator.device)
            with accelerator.autocast():
                loss, stats = objective.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            done = step + 1
            bad = non_finite(loss, grad_norm)
            # all processes stop at the same step, whichever caught a signal or saw a non-finite value
            stop, diverged = steps.any(caught["signal"] is not None, bad is not None)
            if diverged:
                steps.close()
                raise Diverged(f"non-finite {bad or 'loss or gradient norm in another process'} at step {done} "
                               f"(lr {scheduler.get_last_lr()[0]:.3g}): training stopped, nothing written since the "
                               "last checkpoint (a lower train.lr may help)")
            optimizer.step()
            scheduler.step()
            if objective.after_step:
                objective.after_step(raw_model, step)
            if row := steps.step(done, model, loss, stats, grad_norm, scheduler.get_last_lr()[0]):
                history.append(row)
            if done < tc.steps and (done % tc.checkpoint_every == 0 or stop):
                checkpoints.save(done, accelerator, model, optimizer, scheduler, history)
            if stop and done < tc.steps:
                steps.close()
                what = signal.Signals(caught["signal"]).name if caught["signal"] else "another process's signal"
                raise Interrupted(f"{what} at step {done}: checkpoint saved in {run_dir / CKPT_DIR}", caught["signal"])
    samples_per_s = steps.close()
    finish_processes(accelerator, model, raw_model, zero)
    final = objective.final or (lambda m, step: {FINAL_MODEL: {"model_state_dict": m.state_dict(),
                                                               "global_step": step, "config": cfg.to_dict()}})
    for name, state in final(raw_model, tc.steps).items():
        atomic_torch_save(run_dir / name, state)
    last = history[-1] if history else {}
    return {"steps": tc.steps, "final_loss": last.get("loss"), "final_val_loss": last.get("val_loss"),
            "samples_per_s": samples_per_s, "history": history, "resumed_from": start}


def finish_processes(accelerator: Accelerator, model, raw_model: torch.nn.Module, zero: int | None) -> None:
    """Only the main process goes on past training, with whole weights in `raw_model`; the others
    raise OtherProcessDone."""
    if zero == 3:  # hand the main process a plain model with whole parameters
        weights = accelerator.get_state_dict(model)
        model.destroy()  # removes ZeRO-3's parameter-gathering hooks
        if accelerator.is_main_process:
            for name, p in raw_model.named_parameters():
                p.data = weights[name].to(p.device)
    if accelerator.num_processes > 1:  # no collective after this: part cleanly (gloo aborts a process that exits without)
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    if not accelerator.is_main_process:
        raise OtherProcessDone()
