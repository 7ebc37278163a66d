"""The dataset a `collect` run made, as the stages that read it ask for it: its config (what
decides the data), and opening it for a config, refused when it does not match or is not whole."""
from __future__ import annotations

from pathlib import Path

from cccad.config import ATARI_KEYS, DARKROOM_KEYS, Config, ConfigError, config_hash
from cccad.data.store import Dataset, DatasetError, open_dataset

KIND = {"darkroom": "learning_histories", "atari": "atari_transitions"}  # per env family


def dataset_config(cfg: Config) -> dict:
    """What determines the data: a dataset is reused only when this matches exactly."""
    d = cfg.to_dict()
    if cfg.env.family == "atari":
        return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + ATARI_KEYS}, "atari": d["atari"]}
    return {"seed": d["seed"], "env": {k: d["env"][k] for k in ("name",) + DARKROOM_KEYS}, "collect": d["collect"]}


def open_collected(path: str | Path, cfg: Config, verify: bool = True) -> Dataset:
    """The dataset a collect run made for this config (learning histories or Atari transitions),
    its manifest's counts checked against its arrays."""
    expect = dataset_config(cfg)
    ds = open_dataset(path, kind=KIND[cfg.env.family], expect_config=expect, expect_hash=config_hash(expect),
                      verify=verify)
    actions = ds["actions"]
    held = {"transitions": actions.size}
    if cfg.env.family == "atari":
        held.update(episodes=len(ds["episode_length"]), frames=len(ds["frames"]))
    else:
        held.update(n_streams=actions.shape[0])
    for key, n in held.items():
        if key in ds.manifest["counts"] and ds.manifest["counts"][key] != n:
            raise DatasetError(f"{Path(path) / 'manifest.json'}: counts say {key}={ds.manifest['counts'][key]}, "
                               f"the arrays hold {n} (corrupt)")
    return ds


def require_dataset(cfg: Config) -> None:
    """Before any work: inputs.dataset exists, was collected for this config and is whole (sizes
    and checksums)."""
    path = cfg.inputs.dataset
    if not path:
        raise ConfigError("inputs.dataset: not set (a collect run folder's dataset)")
    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"inputs.dataset: no dataset at {path}")
    open_collected(path, cfg)
