"""Stage `collect`: record the source algorithm's learning histories into one dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from cccad.config import Config, ConfigError, config_hash
from cccad.data.histories import collect_histories
from cccad.data.store import DatasetError, DatasetWriter, open_dataset
from cccad.plots import line_plot

NEEDS: tuple = ()
INPUT_KEYS: dict = {}
PER_VARIANT = False
KIND = "learning_histories"
DATASET = "dataset"


def dataset_config(cfg: Config) -> dict:
    """What determines the data: a dataset is reused only when this matches exactly."""
    d = cfg.to_dict()
    return {"seed": d["seed"], "env": d["env"], "collect": d["collect"]}


def decided_by(cfg: Config) -> dict:
    return dataset_config(cfg)


def require_dataset(path: str, key: str) -> None:
    if not path:
        raise ConfigError(f"{key}: not set (a collect run folder's dataset)")
    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"{key}: no dataset at {path}")


def open_histories(path: str | Path, cfg: Config, verify: bool = True):
    expect = dataset_config(cfg)
    return open_dataset(path, kind=KIND, expect_config=expect, expect_hash=config_hash(expect), verify=verify)


def preflight(cfg: Config) -> None:
    pass


def outputs_valid(cfg: Config, run_dir: Path) -> bool:
    try:
        open_histories(Path(run_dir) / DATASET, cfg, verify=False)  # sizes and hash; checksums when used
        return True
    except DatasetError:
        return False


def run(cfg: Config, run_dir: Path, log=print) -> dict:
    path = Path(run_dir) / DATASET
    if (path / "manifest.json").exists():
        ds = open_histories(path, cfg)  # refuses a mismatched or corrupt dataset, never overwrites it
        log(f"loaded existing dataset {path}")
        stats = ds.meta
    else:
        expect = dataset_config(cfg)
        writer = DatasetWriter(path, KIND, expect, config_hash(expect))
        try:
            stats = collect_histories(cfg, writer)
            writer.commit(counts={"streams": stats["n_streams"], "transitions": stats["transitions"]}, meta=stats)
        except BaseException:
            writer.abort()
            raise
        log(f"collected {stats['transitions']:,} transitions in {stats['seconds']:.1f}s "
            f"({stats['transitions_per_s']:,.0f}/s) into {path}")
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
