import pytest

from cccad.config import ConfigError, load_config
from conftest import CONFIGS, cccad, write_yaml


def error_of(tmp_path, data, overrides=()):
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg, str(path)


def test_extends_and_overrides_merge_in_order(tmp_path):
    parent = write_yaml(tmp_path / "parent.yaml", {"train": {"lr": 0.1, "steps": 10, "num_warmup_steps": 2}, "seed": 3})
    child = write_yaml(tmp_path / "sub" / "child.yaml", {"extends": "../parent.yaml", "train": {"steps": 20}})
    cfg = load_config(child, ["train.batch_size=7", "model.dropout=0.5"])
    assert (cfg.train.lr, cfg.train.steps, cfg.train.batch_size, cfg.seed) == (0.1, 20, 7, 3)
    assert cfg.model.dropout == 0.5 and cfg.env.size == 9  # untouched keys keep their defaults


def test_shipped_configs_are_valid():
    for path in (CONFIGS / "studies").glob("*.yaml"):
        load_config(path)


def test_unknown_key_names_key_and_file(tmp_path):
    msg, path = error_of(tmp_path, {"train": {"lrr": 0.1}})
    assert "train.lrr" in msg and path in msg and "did you mean lr" in msg


def test_a_retired_key_loads_at_its_old_value_and_is_refused_at_another(tmp_path):
    """Resolved configs of studies submitted before the thresholds left the config hold them."""
    old = write_yaml(tmp_path / "old.yaml", {"train": {"converged_loss": 1.0, "converged_return": 0.8, "steps": 700}})
    assert load_config(old).train.steps == 700
    msg, path = error_of(tmp_path, {"train": {"converged_loss": 0.9}})
    assert "'train.converged_loss' was removed" in msg and path in msg


def test_unknown_key_from_parent_names_parent_file(tmp_path):
    write_yaml(tmp_path / "parent.yaml", {"env": {"sise": 9}})
    msg, _ = error_of(tmp_path, {"extends": "parent.yaml"})
    assert "env.sise" in msg and str(tmp_path / "parent.yaml") in msg


@pytest.mark.parametrize("data,key,words", [
    ({"train": {"lr": "fast"}}, "train.lr", "expected a number"),
    ({"train": {"steps": 1.5}}, "train.steps", "expected an integer"),
    ({"evaluate": {"greedy": "yes"}}, "evaluate.greedy", "true or false"),
    ({"env": {"name": "lavaroom"}}, "env.name", "not one of"),
    ({"model": {"n_embd": 30, "n_head": 4}}, "model.n_embd", "divisible"),
    ({"model": {"n_layer": 0}}, "model.n_layer", "positive"),
    ({"train": {"num_warmup_steps": 50, "steps": 10}}, "train.num_warmup_steps", "within"),
    ({"train": {"steps": 10}}, "train.num_warmup_steps", "set by train.steps"),
    ({"env": {"test_fraction": 1.5}}, "env.test_fraction", "between"),
    ({"study": {"stages": ["collect", "dance"]}}, "study.stages", "unknown stage"),
    ({"train": 5}, "train", "expected a mapping"),
    ({"env": {"name": "atari", "game": "Assault"}}, "env.game", "not an ALE game id"),
    ({"env": {"name": "atari", "frame_size": 32}}, "env.frame_size", "within [36, 256]"),
    ({"env": {"name": "atari", "frame_size": 72}}, "env.frame_size", "divisible by 2^4"),
    ({"env": {"name": "atari", "frame_stack": 0}}, "env.frame_stack", "positive"),
    ({"env": {"name": "atari", "sticky_actions": 1.0}}, "env.sticky_actions", "within [0, 1)"),
    ({"atari": {"ppo_batch_size": 4096, "ppo_n_steps": 128}}, "atari.ppo_batch_size", "ppo_n_steps x ppo_n_envs"),
    ({"atari": {"episodes": 4, "val_fraction": 0.1}}, "atari.val_fraction", "holds out 0 of 4 episodes"),
    ({"atari": {"random_action_share": 1.5}}, "atari.random_action_share", "within [0, 1]"),
    ({"atari": {"ppo_tiemsteps": 5}}, "atari.ppo_tiemsteps", "did you mean ppo_timesteps"),
    ({"world_model": {"channels": []}}, "world_model.channels", "at least one"),
    ({"world_model": {"ema_momentum": 1.5}}, "world_model.ema_momentum", "within [0, 1]"),
    ({"evaluate": {"window_stride": 0}}, "evaluate.window_stride", "positive"),
    ({"model": {"recent_len": 20}, "evaluate": {"window_stride": 21}}, "evaluate.window_stride", "at most 20"),
    ({"model": {"context_len": 30}, "evaluate": {"window_stride": 40}}, "evaluate.window_stride", "at most 30"),
])
def test_bad_values_name_the_key(tmp_path, data, key, words):
    msg, path = error_of(tmp_path, data)
    assert key in msg and words in msg and path in msg


def test_override_errors_name_the_command_line(tmp_path):
    msg, _ = error_of(tmp_path, {}, ["train.steps=many"])
    assert "command line" in msg and "train.steps" in msg
    msg, _ = error_of(tmp_path, {}, ["train.nope=1"])
    assert "command line" in msg and "train.nope" in msg


def test_exponent_floats_and_list_items(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "ok.yaml", {"train": {"lr": "1e-4"}}), ["train.weight_decay=1e-5"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 1e-5
    msg, path = error_of(tmp_path, {"train": {"betas": [0.9, "x"]}})
    assert msg.startswith(path) and "train.betas[1]" in msg


@pytest.mark.parametrize("data,key,words", [
    ({"env": {"size": 2, "test_fraction": 0.9}}, "env.test_fraction", "leaving none"),
    ({"env": {"train_tasks": 80}}, "env.train_tasks", "within [1, 73]"),
    ({"env": {"size": 300}}, "env.size", "at most 256"),
    ({"train": {"log_every": 7, "val_every": 10}}, "train.val_every", "multiple of log_every"),
    ({"collect": {"ppo_n_steps": 1}}, "collect.ppo_n_steps", "at least 2"),
    ({"model": {"recent_len": 30, "chunk_len": 40}}, "model.chunk_len", "at most recent_len (30)"),
    ({"pretrain": {"pretrain_steps": 100, "pretrain_warmup_steps": 0, "curriculum": [{"steps": 60, "depths": [1]}]}},
     "pretrain.curriculum", "phases add up to 60 steps, pretrain_steps is 100"),
    ({"pretrain": {"pretrain_steps": 10, "pretrain_warmup_steps": 0, "curriculum": [{"steps": 10, "depths": [0]}]}},
     "pretrain.curriculum[0].depths", "depths of 1 or more"),
    ({"pretrain": {"curriculum": [{"steps": 10}]}}, "pretrain.curriculum[0]", "missing key 'depths'"),
    ({"model": {"max_compression_depth": 2}}, "pretrain.curriculum", "uses depth 3, beyond model.max_compression_depth=2"),
    ({"train": {"freeze_encoder": True}}, "train.freeze_encoder", "compressed_ad only"),
])
def test_impossible_sizes(tmp_path, data, key, words):
    msg, path = error_of(tmp_path, data)
    assert key in msg and words in msg and path in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_cli_config_error_is_one_line_exit_2_nothing_written(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", {"extends": str(CONFIGS / "studies" / "smoke.yaml"),
                                             "collect": {"episods": 5}})
    out = tmp_path / "run"
    proc = cccad("run", "collect", "-c", bad, "--out", out, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "collect.episods" in lines[0] and str(bad) in lines[0]
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = cccad("local", CONFIGS / "studies" / "smoke.yaml", "--runs", tmp_path / "runs", "study.envs=[nowhere]",
                 check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and not (tmp_path / "runs").exists()
    proc = cccad("local", CONFIGS / "studies" / "smoke.yaml", "--runs", tmp_path / "runs", "seed=3", check=False)
    assert proc.returncode == 2 and "seed: set by the study runner" in proc.stderr
