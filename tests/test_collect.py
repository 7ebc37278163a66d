import numpy as np

from cccad.config import load_config
from cccad.data.collected import open_collected
from conftest import cccad


def check_transitions_consistent(ds, horizon):
    s, ns = np.asarray(ds["states"]), np.asarray(ds["next_states"])
    r = np.asarray(ds["rewards"])
    T = s.shape[1]
    within = np.ones(T - 1, dtype=bool)
    within[horizon - 1::horizon] = False  # the step after an episode's last is a reset
    np.testing.assert_array_equal(ns[:, :-1][:, within], s[:, 1:][:, within])
    np.testing.assert_array_equal(s[:, ::horizon], 4)  # every episode starts at the centre
    np.testing.assert_array_equal(np.asarray(ds["episode_returns"]), r.reshape(len(r), -1, horizon).sum(2))


def test_qlearning_histories_improve_and_are_consistent(tmp_path, tiny_config):
    out = tmp_path / "collect"
    cccad("run", "collect", "-c", tiny_config, "--out", out, "collect.episodes=200", "collect.streams_per_task=4")
    cfg = load_config(tiny_config, ["collect.episodes=200", "collect.streams_per_task=4"])
    ds = open_collected(out / "dataset", cfg)
    assert ds["actions"].shape == (73 * 4, 200 * 20)
    check_transitions_consistent(ds, 20)
    from cccad.envs.darkroom import DarkroomTasks
    optimal = DarkroomTasks(cfg.env).optimal_return(np.asarray(ds["task_ids"]))
    curve = (np.asarray(ds["episode_returns"]) / optimal[:, None]).mean(0)
    # the source really learns each task: from about chance to near optimal
    assert curve[0] < 0.1 and curve[:5].mean() < curve[5:10].mean() < curve[10:20].mean(), curve[:20]
    assert curve[-20:].mean() > 0.85, curve[-20:]
    assert (out / "source_return.png").stat().st_size > 1000


def test_second_run_loads_instead_of_recollecting(tmp_path, tiny_config):
    out = tmp_path / "collect"
    cccad("run", "collect", "-c", tiny_config, "--out", out)
    mtime = (out / "dataset" / "manifest.json").stat().st_mtime_ns
    proc = cccad("run", "collect", "-c", tiny_config, "--out", out)
    assert "loaded existing dataset" in proc.stdout
    assert (out / "dataset" / "manifest.json").stat().st_mtime_ns == mtime
    # a config that does not match the stored data is refused, and the data is left alone
    proc = cccad("run", "collect", "-c", tiny_config, "--out", out, "collect.episodes=31", check=False)
    assert proc.returncode == 2 and "collect.episodes=30 (config wants 31)" in proc.stderr
    assert (out / "dataset" / "manifest.json").stat().st_mtime_ns == mtime


def test_sb3_ppo_source_records_its_learning_history(tmp_path, tiny_config):
    out = tmp_path / "collect"
    cccad("run", "collect", "-c", tiny_config, "--out", out, "collect.source=sb3_ppo", "collect.streams_per_task=1",
          "collect.episodes=10", "env.test_fraction=0.95")
    cfg = load_config(tiny_config, ["collect.source=sb3_ppo", "collect.streams_per_task=1", "collect.episodes=10",
                                    "env.test_fraction=0.95"])
    ds = open_collected(out / "dataset", cfg)
    assert ds["actions"].shape == (4, 200)
    check_transitions_consistent(ds, 20)
    assert len(set(np.asarray(ds["actions"]).ravel().tolist())) == 5  # a real stochastic policy acted
