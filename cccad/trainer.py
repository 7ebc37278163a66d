"""The one training loop, shared by every training stage.

A stage hands over a model, a loss, and a batch function. The global batch of step k is drawn
from an RNG seeded with (seed, k) and each process loads only its slice of it, so the data
position is the step (resuming needs no sampler state) and the data seen does not depend on the
number of processes. Checkpoints hold model, optimizer,
scheduler, step and RNG states; they are written atomically and loaded without pickle.
SIGTERM or SIGUSR2 (SLURM's requeue, preemption and time-limit signals) end the current step, save
a checkpoint there and raise `Interrupted`: the rerun resumes from that step exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import sys
import threading
import time
from datetime import timedelta
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import InitProcessGroupKwargs
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from cccad.config import Config, ConfigError, TrainConfig, config_hash
from cccad.fs import atomic_torch_save, torch_load

CKPT_DIR = "checkpoints"
FINAL_MODEL = "model.pt"
# a checkpoint resumes only under the same config as far as it decides the weights (the stage's
# `decided_by`), less the dataset path (the data is checked by its own hash) and the cadence
# (and the strategy, which the checkpoint records and checks itself)
RESUME_IGNORED = ("dataset", "log_every", "checkpoint_every", "keep_checkpoints", "val_every", "val_batches", "strategy",
                  "collective_timeout_s")


def resume_hash(decided_by: dict) -> str:
    d = dict(decided_by)
    if "train" in d:
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESUME_IGNORED}
    return config_hash(d)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; the process should exit with
    EXIT_INTERRUPTED so that a scheduler requeues it."""


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


class OtherProcessDone(Exception):
    """Raised in every process but the main one when training ends: only the main process goes
    on past training (scoring, plots, metrics); the others exit 0."""


EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


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
    and loads the samples `part` (a slice) of it; `val_batch(i)` is a fixed validation batch (or
    None). `decided_by`: the config subset that decides the weights (resume refuses others).
    Scalars go to TensorBoard as `<tag>/loss`, `<tag>/<stat>`, `lr`.
    `final(model, step)` gives the final files, {path in the run folder: contents} (default:
    weights, step and config in model.pt). `frozen`: nets the loss reads but never trains (moved
    to the device, kept in eval mode without gradients, not checkpointed). `after_step(model,
    step)` runs after each optimizer step (e.g. an EMA target update; state it changes must live
    in `model` to be checkpointed). `on_log(row, log)` sees each logged row (e.g. to warn)."""
    model: torch.nn.Module
    loss: Callable
    batch: Callable[[np.random.Generator, int, slice, int], dict]
    decided_by: dict
    val_batch: Callable[[int], dict] | None = None
    tag: str = "train"
    final: Callable[[torch.nn.Module, int], dict[str, dict]] | None = None
    frozen: torch.nn.Module | None = None
    after_step: Callable[[torch.nn.Module, int], None] | None = None
    on_log: Callable[[dict, Callable], None] | None = None


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
# what a ZeRO optimizer's per-process state dict holds that resuming needs: the base optimizer's
# state for this process's partition and its fp32 master partition (plain tensors and numbers;
# the rest is DeepSpeed objects that the running optimizer already has)
ZERO_SHARD_KEYS = {2: ("base_optimizer_state", "single_partition_of_fp32_groups"),
                   3: ("optimizer_state_dict", "fp32_flat_groups")}


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


def shard_file(checkpoint: Path, rank: int) -> Path:
    """A ZeRO checkpoint's optimizer partition of process `rank`, beside the checkpoint."""
    return checkpoint.with_name(f"{checkpoint.stem}.rank{rank}.pt")


def checkpoint_files(run_dir: Path) -> list[Path]:
    files = [(int(m.group(1)), p) for p in (run_dir / CKPT_DIR).glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(files)]


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict:
    try:
        state = torch_load(path)
    except Exception as e:  # truncated zip, bad magic, forbidden pickle global ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def load_weights(module: torch.nn.Module, state_dict: dict, path: Path, prefix: str = "") -> None:
    """Load `state_dict` into `module`, refusing (naming the tensor) any extra, missing or
    differently shaped tensor. `prefix`: the module's name in the model, for the message."""
    own = module.state_dict()
    for name, tensor in state_dict.items():
        if name not in own:
            raise CheckpointError(f"{path}: tensor '{prefix}{name}' is not in this model (model config differs)")
        if own[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: tensor '{prefix}{name}' has shape {tuple(tensor.shape)}, "
                                  f"this model needs {tuple(own[name].shape)}")
    missing = sorted(set(own) - set(state_dict))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks tensor '{prefix}{missing[0]}'")
    module.load_state_dict(state_dict)


def _move(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def probe_fit_config(cfg: Config) -> Config:
    """Heads on frozen nets train with the probe section's steps, batch and lr, constant lr."""
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=cfg.probe.steps, batch_size=cfg.probe.batch_size, lr=cfg.probe.lr,
        num_warmup_steps=0, schedule="constant", weight_decay=0.0))


def fit(run_dir: Path, cfg: Config, objective: Objective, log=print) -> dict:
    """Train `objective` for cfg.train.steps, resuming from the latest checkpoint in run_dir."""
    tc = cfg.train
    run_dir = Path(run_dir)
    accelerator = make_accelerator(tc)
    torch.manual_seed(cfg.seed)
    model = objective.model
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tuple(tc.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    expected_hash = resume_hash(objective.decided_by)

    zero = ZERO_STAGE.get(tc.strategy)
    if zero == 3 and objective.after_step:
        raise ConfigError("train.strategy: zero3 cannot run this stage's after-step update (it reads whole "
                          "parameters, which ZeRO-3 splits across processes); use ddp or zero2")
    world, rank = accelerator.num_processes, accelerator.process_index
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size: {tc.batch_size} is not divisible by the {world} processes")

    start, history = 0, []
    ckpts = checkpoint_files(run_dir)
    if ckpts:
        state = load_checkpoint(ckpts[-1], ("model_state_dict", "scheduler_state_dict", "global_step", "rng",
                                            "config_hash") + (() if zero else ("optimizer_state_dict",)))
        if state["config_hash"] != expected_hash:
            raise CheckpointError(f"{ckpts[-1]}: written by a different config (hash {state['config_hash']}, "
                                  f"this run {expected_hash}); use a new run folder or delete {run_dir / CKPT_DIR}")
        saved = (state.get("strategy", "ddp"), state.get("processes", 1))
        if saved[0] != tc.strategy or (zero and saved[1] != world):
            raise CheckpointError(f"{ckpts[-1]}: written under train.strategy={saved[0]} by {saved[1]} processes; this "
                                  f"run is {tc.strategy} with {world} (ZeRO optimizer state is split per process)")
        model.load_state_dict(state["model_state_dict"])
        if not zero:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        _set_rng_state(state["rng"])
        start, history = state["global_step"], state.get("history", [])
        log(f"resumed from {ckpts[-1]} at step {start}")

    # the scheduler stays unwrapped: accelerate would step it once per process, changing the
    # schedule with the process count; ours follows the optimizer step count only
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    if zero == 3:
        held = sum(p.ds_tensor.numel() for p in raw_model.parameters())
        log(f"ZeRO-3: process {rank} of {world} holds {held:,} of {sum(p.ds_numel for p in raw_model.parameters()):,} "
            "parameter values")
    if ckpts and zero:  # this process's optimizer partition, into the running ZeRO optimizer
        shard = load_checkpoint(shard_file(ckpts[-1], rank), ("zero", "rng"))
        zero_optimizer = model.optimizer
        full = zero_optimizer.state_dict()
        full.update(shard["zero"])
        zero_optimizer.load_state_dict([full] * world, load_from_fp32_weights=True)
        _set_rng_state(shard["rng"])
    if objective.frozen is not None:
        objective.frozen.to(accelerator.device).eval().requires_grad_(False)
    writer = SummaryWriter(run_dir / "tb", purge_step=start if start else None) if accelerator.is_main_process else None
    part = slice(rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world)

    def mean_over_processes(t: torch.Tensor) -> float:
        return (accelerator.reduce(t.detach().float(), "mean") if world > 1 else t).item()

    def save(step: int):
        """Every process takes part (ZeRO-3 gathers the weights; ZeRO writes one optimizer
        partition per process, all before the main file that makes the checkpoint valid)."""
        path = run_dir / CKPT_DIR / f"step-{step:08d}.pt"
        weights = accelerator.get_state_dict(model)
        if zero:
            zero_state = model.optimizer.state_dict()
            atomic_torch_save(shard_file(path, rank), {"zero": {k: zero_state[k] for k in ZERO_SHARD_KEYS[zero]},
                                                       "rng": _rng_state()})
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_torch_save(path, {
                "model_state_dict": weights, "optimizer_state_dict": None if zero else optimizer.state_dict(),
                "scheduler_state_dict": scheduler.state_dict(), "global_step": step, "rng": _rng_state(),
                "config": cfg.to_dict(), "config_hash": expected_hash, "history": history,
                "strategy": tc.strategy, "processes": world})
            for old in checkpoint_files(run_dir)[:-tc.keep_checkpoints]:
                old.unlink()
                for shard in old.parent.glob(f"{old.stem}.rank*.pt"):
                    shard.unlink()

    def validate() -> dict:
        """Mean loss and stats over the fixed validation batches: {"val_loss": .., "val_<stat>": ..}."""
        if objective.val_batch is None:
            return {"val_loss": None}
        model.eval()
        rows = []
        with torch.no_grad(), accelerator.autocast():
            for i in range(tc.val_batches):
                loss, stats = objective.loss(model, _move(objective.val_batch(i), accelerator.device))
                rows.append({"val_loss": loss.item(), **{f"val_{k}": v.item() for k, v in stats.items()}})
        model.train()
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    model.train()
    bar = tqdm(total=tc.steps, initial=start, disable=not sys.stderr.isatty(), desc=run_dir.name)
    t0, samples, last_loss = time.perf_counter(), 0, float("nan")
    with stop_signals() as caught, lost_peers(world, tc.collective_timeout_s, rank):
        for step in range(start, tc.steps):
            batch = _move(objective.batch(np.random.default_rng([cfg.seed, step]), tc.batch_size, part, step),
                          accelerator.device)
            with accelerator.autocast():
                loss, stats = objective.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else None
            optimizer.step()
            scheduler.step()
            if objective.after_step:
                objective.after_step(raw_model, step)
            samples += tc.batch_size
            done = step + 1
            if done % tc.log_every == 0 or done in (1, tc.steps):
                last_loss = mean_over_processes(loss)  # each process has its part of the batch
                rate = samples / (time.perf_counter() - t0)
                row = {"step": done, "loss": last_loss, "lr": scheduler.get_last_lr()[0], "samples_per_s": rate,
                       **{k: mean_over_processes(v) for k, v in stats.items()}}
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                if done % tc.val_every == 0 or done == tc.steps:
                    row.update(validate())
                history.append(row)
                if objective.on_log:
                    objective.on_log(row, log)
                if writer:
                    tag = objective.tag
                    writer.add_scalar(f"{tag}/loss", row["loss"], done)
                    writer.add_scalar("lr", row["lr"], done)
                    writer.add_scalar(f"{tag}/samples_per_s", rate, done)
                    for k, v in row.items():
                        if k not in ("step", "loss", "lr", "samples_per_s") and v is not None:
                            writer.add_scalar(f"val/{k[4:]}" if k.startswith("val_") else f"{tag}/{k}", v, done)
                bar.set_postfix(loss=f"{last_loss:.4f}")
                if bar.disable and "val_loss" in row:  # no progress bar (not a terminal): a line per validation
                    log(f"step {done}/{tc.steps} loss {last_loss:.4f} val_loss {row['val_loss']} "
                        f"lr {row['lr']:.2e} {rate:.1f} samples/s")
            bar.update(1)
            if done % tc.checkpoint_every == 0 and done < tc.steps:
                save(done)
            stop = caught["signal"] is not None
            if world > 1:  # all processes stop at the same step, whichever caught the signal
                stop = mean_over_processes(torch.tensor(float(stop), device=accelerator.device)) > 0
            if stop and done < tc.steps:
                if done % tc.checkpoint_every:  # (else saved just above)
                    save(done)
                bar.close()
                if writer:
                    writer.close()
                what = signal.Signals(caught["signal"]).name if caught["signal"] else "another process's signal"
                raise Interrupted(f"{what} at step {done}: checkpoint saved in {run_dir / CKPT_DIR}")
    bar.close()
    if writer:
        writer.close()
    if zero == 3:  # hand the main process a plain model with whole parameters
        weights = accelerator.get_state_dict(model)
        model.destroy()  # removes ZeRO-3's parameter-gathering hooks
        if accelerator.is_main_process:
            for name, p in raw_model.named_parameters():
                p.data = weights[name].to(p.device)
    if world > 1:  # no collective after this: part cleanly (gloo aborts a process that exits without)
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    if not accelerator.is_main_process:
        raise OtherProcessDone()
    final = objective.final or (lambda m, step: {FINAL_MODEL: {"model_state_dict": m.state_dict(),
                                                               "global_step": step, "config": cfg.to_dict()}})
    for name, state in final(raw_model, tc.steps).items():
        atomic_torch_save(run_dir / name, state)
    elapsed = time.perf_counter() - t0
    final = history[-1] if history else {}
    return {"steps": tc.steps, "final_loss": final.get("loss"), "final_val_loss": final.get("val_loss"),
            "samples_per_s": samples / elapsed if samples else None, "history": history,
            "resumed_from": start}
