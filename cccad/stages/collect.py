"""Stage `collect`: Darkroom family: record the source algorithm's learning histories; Atari: the
PPO agent of `train_agent` plays, and its transitions are recorded, beside the return of random
actions in the same episodes. Either way into one dataset, reused when it exists and matches the
config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from cccad.checkpoint import CheckpointError
from cccad.config import Config, ConfigError, config_hash
from cccad.data.collected import KIND, dataset_config, open_collected
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetError, DatasetWriter
from cccad.plots import line_plot
from cccad.sections import Column, Curves, Section

NEEDS = {"darkroom": (), "atari": ("train_agent",)}
INPUT_KEYS = {"train_agent": ("inputs.agent", "agent")}
PER_VARIANT = False
FAMILIES = ("darkroom", "atari")
TRAINS = False
DATASET = "dataset"


REPORT = (Section(
    "Data collection", "Transitions recorded, and the return of the source (Darkroom: the learner whose "
    "histories are distilled; Atari: the collected episodes, the PPO agent's with a share of random actions, "
    "against uniformly random actions in the same episodes).",
    (Column("transitions", lambda m: m.get("transitions"), 0),
     Column("source's last normalised return", lambda m: m.get("last_normalised_return")),
     Column("collected episodes' return", lambda m: m.get("collected_mean_return"), 1),
     Column("random actions' return, same episodes", lambda m: m.get("random_policy_mean_return"), 1),
     Column("collected / random", lambda m: m.get("collected_over_random"), 2),
     Column("transitions/s", lambda m: m.get("transitions_per_s"), 0)), labels=("env",),
    plots=(Curves("collect", "source algorithm during collection ({env})", "episode or step", "return",
                  tags=("collect/normalised_return",)),)),)


def summary(m: dict) -> str:
    if "collected_mean_return" in m:  # Atari
        return (f"{m['transitions']:,} transitions; collected episodes' return {m['collected_mean_return']:.1f}, "
                f"random actions' in the same episodes {m['random_policy_mean_return']:.1f}")
    return f"{m['transitions']:,} transitions, the source's last normalised return {m['last_normalised_return']:.3f}"


def decided_by(cfg: Config) -> dict:
    return dataset_config(cfg)


def preflight(cfg: Config) -> None:
    if cfg.env.family == "atari":
        from cccad.data.transitions import saved_agent
        from cccad.envs.atari import check_game
        check_game(cfg.env)
        if not cfg.inputs.agent:
            raise ConfigError("inputs.agent: not set (the agent folder of a train_agent run; an Atari collect plays "
                              "a trained agent)")
        try:
            saved_agent(cfg, cfg.inputs.agent)
        except CheckpointError as e:
            raise ConfigError(f"inputs.agent: {e}") from None


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    try:
        open_collected(Path(run_dir) / DATASET, cfg, verify=False)  # sizes and hash; checksums when used
        return True
    except DatasetError:
        return False


def load_or_collect(cfg: Config, run_dir: Path, collect, log) -> dict:
    """As the world-model reference's DataLoadingPipeline / DataCollectionPipeline: load a valid
    dataset for this config, else collect one (`collect(writer) -> stats`) and commit it atomically."""
    path = Path(run_dir) / DATASET
    if (path / "manifest.json").exists():
        ds = open_collected(path, cfg)  # refuses a mismatched or corrupt dataset, never overwrites it
        log(f"loaded existing dataset {path}")
        return ds.meta
    expect = dataset_config(cfg)
    writer = DatasetWriter(path, KIND[cfg.env.family], expect, config_hash(expect))
    try:
        stats = collect(writer)
        writer.commit(counts={k: stats[k] for k in ("transitions", "episodes", "frames", "n_streams") if k in stats}, meta=stats)
    except BaseException:
        writer.abort()
        raise
    log(f"collected {stats['transitions']:,} transitions in {stats['seconds']:.1f}s "
        f"({stats['transitions_per_s']:,.0f}/s) into {path}")
    return stats


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    if cfg.env.family == "atari":
        return run_atari(cfg, run_dir, log)
    stats = load_or_collect(cfg, run_dir, lambda writer: collect_histories(cfg, writer), log)
    curve, norm = stats["return_curve"], stats["normalised_return_curve"]
    with SummaryWriter(Path(run_dir) / "tb") as tb:
        for i, (r, n) in enumerate(zip(curve, norm)):
            tb.add_scalar("collect/return", r, i)
            tb.add_scalar("collect/normalised_return", n, i)
    line_plot(Path(run_dir) / "source_return.png", {cfg.collect.source: norm},
              f"source learning curve ({cfg.env.name})", "episode", "normalised return")
    tenth = max(1, len(curve) // 10)
    return {"transitions": stats["transitions"], "transitions_per_s": stats["transitions_per_s"],
            "source": cfg.collect.source, "first_return": float(np.mean(curve[:tenth])),
            "last_return": float(np.mean(curve[-tenth:])),
            "first_normalised_return": float(np.mean(norm[:tenth])),
            "last_normalised_return": float(np.mean(norm[-tenth:])), "return_curve": curve}


def run_atari(cfg: Config, run_dir: Path, log=print) -> dict:
    from cccad.data.transitions import collect_transitions, load_agent, random_policy_returns

    def collect(writer):
        stats = collect_transitions(cfg, load_agent(cfg, cfg.inputs.agent), writer)
        return {**stats, "random_returns": random_policy_returns(cfg)}

    stats = load_or_collect(cfg, run_dir, collect, log)
    ds = open_collected(Path(run_dir) / DATASET, cfg, verify=False)
    returns = np.asarray(ds["episode_return"])
    return {"transitions": stats["transitions"], "episodes": stats["episodes"],
            "transitions_per_s": stats["transitions_per_s"], "collect_seconds": stats["seconds"],
            "collected_mean_return": float(returns.mean()), "val_episodes": stats["val_episodes"],
            "random_policy_mean_return": float(np.mean(stats["random_returns"])),
            "collected_over_random": float(returns.mean() / max(np.mean(stats["random_returns"]), 1e-9)),
            "random_action_share": float(np.asarray(ds["random_action"]).mean()),
            "reward_mean": float(np.asarray(ds["rewards"]).mean())}
