"""The dataset a `collect` run made, as the stages that read it ask for it: its config (what
decides the data), and opening it for a config, refused when it does not match or is not whole."""
from __future__ import annotations

from pathlib import Path

from cccad.config import ATARI_KEYS, DARKROOM_KEYS, Config, ConfigError, config_hash
from cccad.data.store import Dataset, open_dataset

KIND = {"darkroom": "learning_histories", "atari": "atari_transitions"}  # per env family


def dataset_config(cfg: Config) -> dict:
    """What determines the data: a dataset is reused only when this matches exactly."""
    d = cfg.to_dict()
    if cfg.env.family == "atari":
        return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + ATARI_KEYS}, "atari": d["atari"]}
    return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + DARKROOM_KEYS}, "collect": d["collect"]}


def open_collected(path: str | Path, cfg: Config, verify: bool = True) -> Dataset:
    """The dataset a collect run made for this config (learning histories or Atari transitions)."""
    expect = dataset_config(cfg)
    return open_dataset(path, kind=KIND[cfg.env.family], expect_config=expect, expect_hash=config_hash(expect),
                        verify=verify)


def require_dataset(cfg: Config) -> None:
    """Before any work: inputs.dataset exists, was collected for this config and is whole (sizes
    and checksums)."""
    path = cfg.inputs.dataset
    if not path:
        raise ConfigError("inputs.dataset: not set (a collect run folder's dataset)")
    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"inputs.dataset: no dataset at {path}")
    open_collected(path, cfg)
