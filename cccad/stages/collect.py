"""Stage `collect`: Darkroom family: record the source algorithm's learning histories; Atari:
train a PPO agent, then record its transitions. Either way into one dataset, reused when it exists
and matches the config."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from cccad.config import ATARI_KEYS, DARKROOM_KEYS, Config, ConfigError, config_hash
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetError, DatasetWriter, open_dataset
from cccad.plots import line_plot

NEEDS: tuple = ()
INPUT_KEYS: dict = {}
PER_VARIANT = False
FAMILIES = ("darkroom", "atari")
TRAINS = False
KIND = "learning_histories"
ATARI_KIND = "atari_transitions"
DATASET = "dataset"
AGENT_DIR = "agent"


def dataset_config(cfg: Config) -> dict:
    """What determines the data: a dataset is reused only when this matches exactly."""
    d = cfg.to_dict()
    if cfg.env.family == "atari":
        return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + ATARI_KEYS}, "atari": d["atari"]}
    return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + DARKROOM_KEYS}, "collect": d["collect"]}


def decided_by(cfg: Config) -> dict:
    return dataset_config(cfg)


def require_dataset(cfg: Config, path: str, key: str) -> None:
    """Before any work: the dataset exists, was collected for this config and is whole (sizes and
    checksums)."""
    if not path:
        raise ConfigError(f"{key}: not set (a collect run folder's dataset)")
    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"{key}: no dataset at {path}")
    open_collected(path, cfg)


def open_collected(path: str | Path, cfg: Config, verify: bool = True):
    """The dataset a collect run made for this config (learning histories or Atari transitions)."""
    expect = dataset_config(cfg)
    kind = ATARI_KIND if cfg.env.family == "atari" else KIND
    return open_dataset(path, kind=kind, expect_config=expect, expect_hash=config_hash(expect), verify=verify)


def preflight(cfg: Config) -> None:
    if cfg.env.family == "atari":
        from cccad.envs.atari import check_game
        check_game(cfg.env)


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    try:
        open_collected(Path(run_dir) / DATASET, cfg, verify=False)  # sizes and hash; checksums when used
        return True
    except DatasetError:
        return False


def load_or_collect(cfg: Config, run_dir: Path, kind: str, collect, log) -> dict:
    """The seed's DataLoadingPipeline / DataCollectionPipeline: load a valid dataset for this
    config, else collect one (`collect(writer) -> stats`) and commit it atomically."""
    path = Path(run_dir) / DATASET
    if (path / "manifest.json").exists():
        ds = open_collected(path, cfg)  # refuses a mismatched or corrupt dataset, never overwrites it
        log(f"loaded existing dataset {path}")
        return ds.meta
    expect = dataset_config(cfg)
    writer = DatasetWriter(path, kind, expect, config_hash(expect))
    try:
        stats = collect(writer)
        writer.commit(counts={k: stats[k] for k in ("transitions", "episodes", "n_streams") if k in stats}, meta=stats)
    except BaseException:
        writer.abort()
        raise
    log(f"collected {stats['transitions']:,} transitions in {stats['seconds']:.1f}s "
        f"({stats['transitions_per_s']:,.0f}/s) into {path}")
    return stats


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    if cfg.env.family == "atari":
        return run_atari(cfg, run_dir, log)
    stats = load_or_collect(cfg, run_dir, KIND, lambda writer: collect_histories(cfg, writer), log)
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
    from cccad.data.transitions import collect_transitions, train_agent

    agent = {}

    def collect(writer):
        policy, info = train_agent(cfg, Path(run_dir) / AGENT_DIR, log)
        agent.update(info)
        return {**collect_transitions(cfg, policy, writer), "agent_returns": info["returns"],
                "agent_seconds": info["seconds"]}

    stats = load_or_collect(cfg, run_dir, ATARI_KIND, collect, log)
    agent_returns = stats["agent_returns"]
    if agent_returns:
        with SummaryWriter(Path(run_dir) / "tb") as tb:
            for steps, r in agent_returns:
                tb.add_scalar("collect/agent_return", r, int(steps))
        line_plot(Path(run_dir) / "agent_return.png", {"PPO agent": [r for _, r in agent_returns]},
                  f"PPO agent learning curve ({cfg.env.game})", "training episode", "return")
    ds = open_collected(Path(run_dir) / DATASET, cfg, verify=False)
    returns = np.asarray(ds["episode_return"])
    tenth = max(1, len(agent_returns) // 10)
    return {"transitions": stats["transitions"], "episodes": stats["episodes"],
            "transitions_per_s": stats["transitions_per_s"], "collect_seconds": stats["seconds"],
            "agent_seconds": stats["agent_seconds"], "agent_reused": agent.get("reused"),  # None: dataset reused
            "agent_first_return": float(np.mean([r for _, r in agent_returns[:tenth]])) if agent_returns else None,
            "agent_last_return": float(np.mean([r for _, r in agent_returns[-tenth:]])) if agent_returns else None,
            "collected_mean_return": float(returns.mean()), "val_episodes": stats["val_episodes"],
            "random_action_share": float(np.asarray(ds["random_action"]).mean()),
            "reward_mean": float(np.asarray(ds["rewards"]).mean())}
