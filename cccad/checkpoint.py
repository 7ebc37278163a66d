"""The one checkpoint format and loader.

A checkpoint is a torch file (a zip) of plain tensors and numbers: written atomically, loaded with
`weights_only=True` (no pickled code runs) after every record's CRC is checked. A file that was
trained under another config, or holds other tensor shapes, is refused naming the file and the key
or tensor (`load_matching`, `load_weights`).

`TrainingCheckpoints` is the training loop's own state in a run's checkpoints/: model, optimizer,
scheduler, RNG, step and logged history at a step, and under ZeRO one optimizer partition per
process beside it; saved every `train.checkpoint_every` steps and resumed from the latest.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from cccad.fs import atomic_torch_save, torch_load

CKPT_DIR = "checkpoints"
FINAL_MODEL = "model.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def load_checkpoint(path: Path, keys: tuple[str, ...] = ()) -> dict:
    try:
        state = torch_load(path)
    except Exception as e:  # truncated zip, bad magic, forbidden pickle global ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def load_matching(path: Path, keys: tuple[str, ...], config: dict, same: tuple[str, ...]) -> dict:
    """A checkpoint holding `keys` and a "config" whose dotted keys `same` (e.g. "model.n_embd")
    equal `config`'s, else refused naming the first key that differs."""
    state = load_checkpoint(path, keys + ("config",))
    for key in same:
        section, _, name = key.partition(".")
        theirs, ours = state["config"].get(section, {}).get(name), config[section][name]
        if theirs != ours:
            raise CheckpointError(f"{path}: trained with {key}={theirs!r}, this config has {ours!r}")
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


# ----------------------------------------------------------------------------- training state

# what a ZeRO optimizer's per-process state dict holds that resuming needs: the base optimizer's
# state for this process's partition and its fp32 master partition (plain tensors and numbers;
# the rest is DeepSpeed objects that the running optimizer already has)
ZERO_SHARD_KEYS = {2: ("base_optimizer_state", "single_partition_of_fp32_groups"),
                   3: ("optimizer_state_dict", "fp32_flat_groups")}


def checkpoint_files(run_dir: Path) -> list[Path]:
    files = [(int(m.group(1)), p) for p in (Path(run_dir) / CKPT_DIR).glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(files)]


def shard_file(checkpoint: Path, rank: int) -> Path:
    """A ZeRO checkpoint's optimizer partition of process `rank`, beside the checkpoint."""
    return checkpoint.with_name(f"{checkpoint.stem}.rank{rank}.pt")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingCheckpoints:
    """A training run's checkpoints/. `identity` is the hash of the config that decides the
    weights: a checkpoint of another is refused. `zero` is the ZeRO stage (None for one process
    or DDP); `world`, `rank` the processes of the run and this one's index."""

    def __init__(self, run_dir: Path, identity: str, config: dict, strategy: str, zero: int | None,
                 world: int, rank: int, keep: int):
        self.run_dir, self.identity, self.config = Path(run_dir), identity, config
        self.strategy, self.zero, self.world, self.rank, self.keep = strategy, zero, world, rank, keep
        self.latest: Path | None = None

    def newest_whole(self, log, barrier) -> tuple[Path, dict] | tuple[None, None]:
        """The newest checkpoint that loads whole (under ZeRO with every process's partition, so
        every process picks the same one). A damaged one (truncated, a flipped byte: a disk's
        doing, or a copy's) is set aside, renamed `<name>.damaged`, with a line naming it; the one
        before it is tried. `barrier()` waits for every process (they all read before any renames)."""
        keys = ("model_state_dict", "scheduler_state_dict", "global_step", "rng", "config_hash")
        damaged, found = [], (None, None)
        for path in reversed(checkpoint_files(self.run_dir)):
            try:
                state = load_checkpoint(path, keys + (() if self.zero else ("optimizer_state_dict",)))
                same_layout = (state.get("strategy"), state.get("processes")) == (self.strategy, self.world)
                for rank in range(self.world if self.zero and same_layout else 0):  # (another layout: refused below)
                    load_checkpoint(shard_file(path, rank), ("zero", "rng"))
                found = path, state
                break
            except CheckpointError as e:
                damaged.append((path, e))
        if damaged:
            barrier()
        for path, e in damaged:
            if self.rank == 0:
                for file in [path, *path.parent.glob(f"{path.stem}.rank*.pt")]:
                    file.rename(file.with_name(file.name + ".damaged"))
                log(f"skipped damaged checkpoint {path} ({e}); kept as {path.name}.damaged")
        return found

    def resume(self, model, optimizer, scheduler, log, barrier=lambda: None) -> tuple[int, list]:
        """Load the newest whole checkpoint's weights, optimizer (unless ZeRO's: see
        `resume_partition`), scheduler and RNG; (step, history) to go on from, (0, []) if none."""
        self.latest, state = self.newest_whole(log, barrier)
        if state is None:
            return 0, []
        if state["config_hash"] != self.identity:
            raise CheckpointError(f"{self.latest}: written by a different config (hash {state['config_hash']}, "
                                  f"this run {self.identity}); use a new run folder or delete {self.run_dir / CKPT_DIR}")
        saved = (state.get("strategy", "ddp"), state.get("processes", 1))
        if saved[0] != self.strategy or (self.zero and saved[1] != self.world):
            raise CheckpointError(f"{self.latest}: written under train.strategy={saved[0]} by {saved[1]} processes; "
                                  f"this run is {self.strategy} with {self.world} (ZeRO optimizer state is split per "
                                  "process)")
        model.load_state_dict(state["model_state_dict"])
        if not self.zero:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        set_rng_state(state["rng"])
        log(f"resumed from {self.latest} at step {state['global_step']}")
        return state["global_step"], state.get("history", [])

    def resume_partition(self, engine) -> None:
        """Under ZeRO, after accelerate has wrapped the model: this process's optimizer partition
        (and RNG) into the running ZeRO optimizer."""
        if not (self.zero and self.latest):
            return
        shard = load_checkpoint(shard_file(self.latest, self.rank), ("zero", "rng"))
        full = engine.optimizer.state_dict()
        full.update(shard["zero"])
        engine.optimizer.load_state_dict([full] * self.world, load_from_fp32_weights=True)
        set_rng_state(shard["rng"])

    def save(self, step: int, accelerator, model, optimizer, scheduler, history: list) -> None:
        """Every process takes part (ZeRO-3 gathers the weights; ZeRO writes one optimizer
        partition per process, all before the main file that makes the checkpoint valid)."""
        path = self.run_dir / CKPT_DIR / f"step-{step:08d}.pt"
        weights = accelerator.get_state_dict(model)
        if self.zero:
            zero_state = model.optimizer.state_dict()
            atomic_torch_save(shard_file(path, self.rank), {
                "zero": {k: zero_state[k] for k in ZERO_SHARD_KEYS[self.zero]}, "rng": rng_state()})
            accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        atomic_torch_save(path, {
            "model_state_dict": weights, "optimizer_state_dict": None if self.zero else optimizer.state_dict(),
            "scheduler_state_dict": scheduler.state_dict(), "global_step": step, "rng": rng_state(),
            "config": self.config, "config_hash": self.identity, "history": history,
            "strategy": self.strategy, "processes": self.world})
        for old in checkpoint_files(self.run_dir)[:-self.keep]:
            old.unlink()
            for shard in old.parent.glob(f"{old.stem}.rank*.pt"):
                shard.unlink()
