"""World models on Atari: collection, the two trainings, the probes, the study graph."""
import json
import math

import numpy as np
import pytest
import torch

from cccad.config import load_config
from cccad.data.collected import open_collected
from cccad.data.transitions import Transitions, open_transitions
from cccad.stages import train_jepa, train_jepa_decoder
from cccad.trainer import fit
from cccad.world_probes import reward_objective
from conftest import CONFIGS, cccad, write_yaml

@pytest.fixture
def study(world_study):
    return world_study


def run_config(study, name):
    return load_config(study[1] / ".tasks" / f"{name}.yaml")


def metrics(study, name):
    return json.loads((study[1] / name / "metrics.json").read_text())


def test_graph_runs_every_stage_with_the_seed_output_folders(study):
    file, root, proc = study
    assert proc.stdout.count("[done]") == 11  # the agent, collect, encoder-decoder, and 4 stages per JEPA variant
    for path in ("train-agent-assault-seed0/agent/ppo_policy.pt", "train-agent-assault-seed0/agent_return.png","train-encoder-decoder-assault-seed0/weights/encoder_decoder/model.pt",
                 "train-jepa-JEPA-assault-seed0/weights/jepa/model.pt",
                 "train-jepa-decoder-JEPA-assault-seed0/weights/jepa_decoder/model.pt",
                 "train-reward-predictor-JEPA-assault-seed0/weights/jepa/reward_predictor/model.pt",
                 "train-reward-predictor-JEPA-assault-seed0/weights/encoder_decoder/reward_predictor/model.pt",
                 "train-dynamics-reward-predictor-JEPA-assault-seed0/weights/jepa/dynamics_reward_predictor/model.pt",
                 "train-dynamics-reward-predictor-JEPA-assault-seed0/weights/encoder_decoder/dynamics_reward_predictor/model.pt",
                 "train-jepa-decoder-JEPA-assault-seed0/decoded_frames.png",
                 "train-reward-predictor-JEPA-assault-seed0/reward_mse.png"):
        assert (root / path).is_file(), path
    state = torch.load(root / "train-jepa-JEPA-assault-seed0/weights/jepa/model.pt", weights_only=True)
    assert {"encoder_state_dict", "predictor_state_dict", "target_encoder_state_dict"} <= set(state)
    # probes report held-out metrics beside their floors
    dec = metrics(study, "train-jepa-decoder-JEPA-assault-seed0")
    assert 0 < dec["decoder_l1"] < 1 and 0 < dec["mean_frame_l1"] < 1 and dec["val_samples"] == 128
    # beside it, the encoder-decoder scored on the same held-out transitions, as its own run scored it
    ed = metrics(study, "train-encoder-decoder-assault-seed0")
    for key in ("decoder_l1", "copy_frame_l1", "change_skill"):
        assert math.isclose(dec["encoder_decoder"][key], ed[key], rel_tol=1e-5), key
    report = (root / "report" / "report.md").read_text()
    assert (f"| assault | JEPA | JEPA decoder probe - encoder-decoder | 1/1 | "
            f"{dec['decoder_l1'] - ed['decoder_l1']:.4f} |") in report, report
    for stage in ("train-reward-predictor", "train-dynamics-reward-predictor"):
        m = metrics(study, f"{stage}-JEPA-assault-seed0")
        assert set(m["per_encoder"]) == {"jepa", "encoder_decoder"} and m["mean_reward_mse"] >= 0
    again = cccad("local", file, "--runs", root.parent)
    assert again.stdout.count("[cached]") == 11


def test_collector_records_what_the_env_gave(study, tmp_path):
    from cccad.envs.atari import frames as as_frames, vector_env
    cfg = run_config(study, "collect-assault-seed0")
    ds = open_collected(study[1] / "collect-assault-seed0" / "dataset", cfg)
    data = Transitions(ds, cfg.env.frame_stack)
    ep, dones = np.asarray(ds["episode"]), np.asarray(ds["dones"])
    assert len(np.asarray(ds["episode_length"])) == 5 and np.asarray(ds["episode_is_val"]).sum() == 2
    # done exactly at each episode's last transition
    last = np.r_[ep[1:] != ep[:-1], True]
    np.testing.assert_array_equal(dones, last)
    # next_state of step t is the state of step t+1 within an episode
    b = data.batch(np.arange(len(ep)))
    inside = np.flatnonzero(~last)
    assert torch.equal(b["next_state"][inside], b["state"][inside + 1])
    # an episode's first state repeats its reset frame frame_stack times
    starts = np.r_[0, np.flatnonzero(last)[:-1] + 1]
    first = b["state"][starts]
    assert all(torch.equal(first[:, i], first[:, 0]) for i in range(cfg.env.frame_stack))
    # replaying each env's episodes in order in a vectorised env of its own (the first reset with
    # its seed, the next episodes starting where the last ended) with the recorded actions gives the
    # recorded frames and rewards
    frames, seeds, envs = ds["frames"], np.asarray(ds["episode_seed"]), np.asarray(ds["episode_env"])
    assert len(set(envs)) == cfg.atari.n_envs and len(set(seeds)) == cfg.atari.n_envs
    first_frame = np.asarray(ds["episode_first_frame"])
    for i in sorted(set(envs)):
        replay = vector_env(cfg.env, 1, cfg.atari.max_episode_steps)
        obs, _ = replay.reset(seed=np.array([seeds[envs == i][0]]))
        for e in np.flatnonzero(envs == i):
            f0 = int(first_frame[e])
            np.testing.assert_array_equal(as_frames(obs)[0], frames[f0])
            for j, t in enumerate(np.flatnonzero(ep == e)):
                obs, reward, terminated, truncated, info = replay.step(np.array([ds["actions"][t]], dtype=np.int64))
                done = terminated[0] or truncated[0]
                np.testing.assert_array_equal(as_frames(info["final_obs"] if done else obs)[0], frames[f0 + j + 1])
                assert reward[0] == ds["rewards"][t] and terminated[0] == ds["terminated"][t]
            assert done
        replay.close()
    assert np.asarray(ds["rewards"]).sum() > 0  # the test saw real rewards
    # collecting again with the same agent records the same episodes, step for step
    from cccad.data.store import DatasetWriter, open_dataset
    from cccad.data.transitions import collect_transitions, load_agent
    policy = load_agent(cfg, cfg.inputs.agent)
    writer = DatasetWriter(tmp_path / "again", "atari_transitions", {}, "again")
    stats = collect_transitions(cfg, policy, writer)
    writer.commit({"transitions": stats["transitions"]}, stats)
    again = open_dataset(tmp_path / "again")
    for key in ("frames", "actions", "rewards", "random_action", "episode_env", "episode_is_val"):
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(ds[key]), err_msg=key)
    # the floor: uniform actions in the same envs, seeds and number of episodes, the same on every run
    from cccad.data.transitions import random_policy_returns
    floor = random_policy_returns(cfg)
    assert len(floor) == cfg.atari.episodes and floor == random_policy_returns(cfg)
    m = metrics(study, "collect-assault-seed0")
    assert math.isclose(m["random_policy_mean_return"], np.mean(floor), rel_tol=1e-6)
    assert math.isclose(m["collected_over_random"], m["collected_mean_return"] / np.mean(floor), rel_tol=1e-6)
    assert 0 < np.asarray(ds["random_action"]).mean() < 0.5


@torch.no_grad()
def test_collection_samples_from_the_agents_own_action_distribution():
    from cccad.data.transitions import action_probs, make_agent
    policy = make_agent(load_config(CONFIGS / "studies" / "worldmodel_smoke.yaml")).policy.eval()
    obs = torch.randint(0, 256, (5, *policy.observation_space.shape), dtype=torch.uint8)
    probs = action_probs(policy, obs)
    assert torch.allclose(probs, policy.get_distribution(obs).distribution.probs, atol=1e-6)
    assert probs.shape == (5, policy.action_space.n)


def test_the_agents_envs_stack_clip_and_count_as_the_dataset_does():
    """PPO's envs: states stacked by the dataset's rule, the reward's sign to learn from (the game's
    own in each finished episode's return), the final state of an ended episode in its info."""
    from cccad.data.transitions import AgentEnvs
    cfg = load_config(CONFIGS / "studies" / "worldmodel_smoke.yaml", ["atari.max_episode_steps=120"])
    envs = AgentEnvs(cfg)
    envs.seed(3)
    states = envs.reset()
    k = cfg.env.frame_stack
    assert states.shape == (2, k, 64, 64) and all((states[:, i] == states[:, 0]).all() for i in range(k))
    rng, raw, learned, ended = np.random.default_rng(0), np.zeros(2), np.zeros(2), []
    for t in range(260):
        before = states
        envs.step_async(rng.integers(0, envs.action_space.n, 2))
        states, rewards, dones, infos = envs.step_wait()
        learned += rewards
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}
        for i in range(2):
            if dones[i]:
                last = infos[i]["terminal_observation"]
                assert (last[:-1] == before[i, 1:]).all() and infos[i]["TimeLimit.truncated"]
                assert all((states[i, j] == states[i, 0]).all() for j in range(k))  # the next episode's first state
                ended.append((infos[i]["episode"]["r"], infos[i]["episode"]["l"]))
            else:
                assert (states[i, :-1] == before[i, 1:]).all()
    envs.close()
    assert len(ended) == 4 and all(length == 120 for _, length in ended)
    # Assault's kills are worth 21: the returns are the game's, the agent's signal their count
    assert sum(r for r, _ in ended) > 0 and all(r % 21 == 0 for r, _ in ended)
    assert learned.sum() >= sum(r for r, _ in ended) / 21


def test_second_runs_find_the_agent_and_the_dataset_and_collect_plays_only_its_agent(study, tmp_path):
    file, root, _ = study
    agent_cfg = root / ".tasks" / "train-agent-assault-seed0.yaml"
    proc = cccad("run", "train_agent", "-c", agent_cfg, "--out", root / "train-agent-assault-seed0")
    assert "found the trained PPO agent" in proc.stdout and "trained PPO agent for" not in proc.stdout
    out = root / "collect-assault-seed0"
    cfg_file = root / ".tasks" / "collect-assault-seed0.yaml"
    proc = cccad("run", "collect", "-c", cfg_file, "--out", out)
    assert "loaded existing dataset" in proc.stdout
    # a new dataset (fewer episodes) from the same agent
    proc = cccad("run", "collect", "-c", cfg_file, "--out", tmp_path / "c3", "atari.episodes=3")
    assert "collected" in proc.stdout
    assert json.loads((tmp_path / "c3" / "metrics.json").read_text())["episodes"] == 3
    # an agent another config trained, or none: refused in one line before any play
    for override, says in (("atari.ppo_lr=0.001", "agent trained by another config"), ("inputs.agent=", "inputs.agent: not set")):
        proc = cccad("run", "collect", "-c", cfg_file, "--out", tmp_path / "bad", override, check=False)
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "bad" / "dataset").exists()
    # the agent's report section: its training episodes' returns
    m = metrics(study, "train-agent-assault-seed0")
    assert m["agent_steps"] == 512 and m["agent_episodes"] == len(m["return_curve"]) and m["agent_seconds"] > 0


def test_losses_fall(study):
    for name in ("train-encoder-decoder", "train-jepa-JEPA", "train-jepa-decoder-JEPA"):
        h = metrics(study, f"{name}-assault-seed0")["history"]
        first, last = h[0]["loss"], np.mean([r["loss"] for r in h[-3:]])
        assert last < 0.7 * first, (name, first, last)


@pytest.mark.parametrize("dynamics", [False, True])
def test_reward_probe_loss_falls_to_the_mean_reward_floor(study, tmp_path, dynamics):
    """Rewards are sparse (a batch's loss jumps with each rewarded transition), so the loss is
    measured on a fixed set of 512 training transitions, before and after training: it must end
    below always predicting the mean reward."""
    task = "train-dynamics-reward-predictor" if dynamics else "train-reward-predictor"
    cfg = load_config(study[1] / ".tasks" / f"{task}-JEPA-assault-seed0.yaml", ["probe.steps=500", "probe.lr=0.003"])
    data = open_transitions(cfg)
    obj, latent_batch, mean, scale = reward_objective(cfg, data, dynamics)
    fixed = latent_batch(data.batch(data.train_ids[:512]))
    floor = 2 * float(np.mean(((data.rewards[data.train_ids[:512]] - mean) / scale) ** 2))  # two heads

    def fixed_loss():
        with torch.no_grad():
            return obj.loss(obj.model.cpu().eval(), fixed)[0].item()

    before = fixed_loss()
    fit(tmp_path, cfg.for_probe(), obj, log=lambda *_: None)
    after = fixed_loss()
    assert after < before and after < floor, (before, after, floor)  # beyond the mean reward
    # the heads trained on the frozen nets' latents of the very transitions data.train_batch draws
    drawn = obj.batch(np.random.default_rng([cfg.seed, 7]), 64, slice(16, 48), 7)
    direct = latent_batch(data.train_batch(np.random.default_rng([cfg.seed, 7]), 64, slice(16, 48), 7))
    assert drawn.keys() == direct.keys() and len(drawn["reward"]) == 32
    for k, v in direct.items():
        torch.testing.assert_close(drawn[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_jepa_target_moves_by_the_ema_rule_and_gets_no_gradient(study, tmp_path):
    cfg = load_config(study[1] / ".tasks" / "train-jepa-JEPA-assault-seed0.yaml",
                      ["train.steps=6", "train.num_warmup_steps=2", "train.checkpoint_every=1", "world_model.ema_momentum=0.9",
                       "world_model.ema_momentum_end=0.5"])
    data = open_transitions(cfg)
    model = train_jepa.build(cfg, data.n_actions)
    assert not any(p.requires_grad for p in model.target_encoder.parameters())
    loss, _ = train_jepa.objective(cfg)(model, data.train_batch(np.random.default_rng(0), 8, slice(None), 0))
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())

    import dataclasses
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, keep_checkpoints=10))
    train_jepa.run(cfg, tmp_path, log=lambda *_: None)
    ckpts = sorted((tmp_path / "checkpoints").glob("step-*.pt"))
    states = [torch.load(p, weights_only=True) for p in ckpts]
    assert [s["global_step"] for s in states] == [1, 2, 3, 4, 5]
    for before, after in zip(states, states[1:]):
        m = train_jepa.momentum(cfg, before["global_step"])  # the update after optimizer step k+1
        for name, target in after["model_state_dict"].items():
            if name.startswith("target_encoder."):
                online = after["model_state_dict"]["encoder." + name.removeprefix("target_encoder.")]
                expected = before["model_state_dict"][name].mul(m).add(online, alpha=1 - m)
                assert torch.equal(target, expected), name
    assert train_jepa.momentum(cfg, 0) == 0.9 and train_jepa.momentum(cfg, 5) == 0.5
    # the optimizer holds the encoder and predictor only
    n_trained = sum(1 for n, p in train_jepa.build(cfg, data.n_actions).named_parameters() if p.requires_grad)
    assert len(states[-1]["optimizer_state_dict"]["state"]) == n_trained


@pytest.mark.parametrize("stage", ["jepa_decoder", "reward", "dynamics_reward"])
def test_frozen_nets_stay_bit_identical_through_probe_training(study, tmp_path, stage):
    task = {"jepa_decoder": "train-jepa-decoder", "reward": "train-reward-predictor",
            "dynamics_reward": "train-dynamics-reward-predictor"}[stage]
    cfg = load_config(study[1] / ".tasks" / f"{task}-JEPA-assault-seed0.yaml", ["probe.steps=15"])
    data = open_transitions(cfg)
    if stage == "jepa_decoder":
        obj, _ = train_jepa_decoder.objective(cfg, data)
    else:
        obj = reward_objective(cfg, data, stage == "dynamics_reward")[0]
    frozen_before = {k: v.clone() for k, v in obj.frozen.state_dict().items()}
    trained_before = {k: v.clone() for k, v in obj.model.state_dict().items()}
    fit(tmp_path, cfg.for_probe(), obj, log=lambda *_: None)
    for k, v in obj.frozen.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k
    assert any(not torch.equal(v, trained_before[k]) for k, v in obj.model.state_dict().items())
    # and they are the trained nets, as saved by their runs
    saved = torch.load(study[1] / "train-jepa-JEPA-assault-seed0/weights/jepa/model.pt", weights_only=True)
    prefix = "" if stage == "jepa_decoder" else "jepa."
    for k, v in saved["encoder_state_dict"].items():
        assert torch.equal(obj.frozen.state_dict()[f"{prefix}encoder.{k}"], v)


def test_bad_atari_input_is_refused_in_one_line(study, tmp_path):
    cfg_file = study[1] / ".tasks" / "collect-assault-seed0.yaml"
    proc = cccad("run", "collect", "-c", cfg_file, "--out", tmp_path / "c", "env.game=ALE/NoSuchGame-v5", check=False)
    assert proc.returncode == 2 and "env.game: unknown ALE game 'ALE/NoSuchGame-v5'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "c" / "dataset").exists()
    proc = cccad("run", "train_jepa", "-c", cfg_file, "--out", tmp_path / "j", "env.frame_size=60", check=False)
    assert proc.returncode == 2 and "env.frame_size: must be divisible by 2^4" in proc.stderr
    proc = cccad("run", "train_jepa_decoder", "-c", cfg_file, "--out", tmp_path / "d",
                 f"inputs.dataset={study[1] / 'collect-assault-seed0' / 'dataset'}", check=False)
    assert proc.returncode == 2 and "inputs.jepa_run: no weights/jepa/model.pt" in proc.stderr
    # a study listing a world-model stage for Darkroom envs only
    bad = write_yaml(tmp_path / "bad.yaml", {"extends": str(CONFIGS / "studies" / "smoke.yaml"),
                                             "study": {"stages": ["collect", "train_jepa"]}})
    proc = cccad("local", bad, "--runs", tmp_path / "runs", check=False)
    assert proc.returncode == 2 and "'train_jepa' runs for atari envs, and study.envs has none" in proc.stderr
    assert not (tmp_path / "runs").exists()


@torch.no_grad()
def test_models_shapes():
    from cccad.models.world_model import Decoder, Encoder, Predictor, RewardPredictor, as_frames
    cfg = load_config(CONFIGS / "studies" / "worldmodel.yaml")
    enc, pred = Encoder(cfg.world_model, 4, 64), Predictor(cfg.world_model, 7)
    dec, rew = Decoder(cfg.world_model, 1, 64), RewardPredictor(cfg.world_model)
    z = enc(torch.zeros(3, 4, 64, 64, dtype=torch.uint8))
    assert z.shape == (3, 256) and pred(z, torch.tensor([0, 3, 6])).shape == (3, 256)
    out = dec(z)  # unbounded (a sigmoid saturated in training); frames are clamped where scored and drawn
    frames = as_frames(out)
    assert out.shape == frames.shape == (3, 1, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert rew(z, z).shape == (3,) and not math.isnan(float(rew(z, z).sum()))


def test_decoders_are_scored_on_the_pixels_that_change(study, tmp_path):
    """A decoder that copies the current frame scores change skill 0, a perfect one 1; the L1 on
    changed pixels of the copy is the copy's whole error over the changed share."""
    from cccad.models.world_model import next_frame
    from cccad.world_probes import score_decoder
    cfg = load_config(study[1] / ".tasks" / "train-jepa-decoder-JEPA-assault-seed0.yaml")
    data = open_transitions(cfg)
    copy = score_decoder(cfg, data, lambda b: b["state"][:, -b["frame_channels"]:].float() / 255.0, tmp_path, "copy",
                         log=lambda *_: None)
    assert 0 < copy["changed_pixel_share"] < 1 and copy["change_skill"] == 0.0
    assert copy["decoder_l1"] == copy["copy_frame_l1"] > 0
    assert math.isclose(copy["copy_frame_changed_l1"] * copy["changed_pixel_share"], copy["copy_frame_l1"], rel_tol=1e-4)
    perfect = score_decoder(cfg, data, next_frame, tmp_path, "perfect", log=lambda *_: None)
    assert perfect["decoder_l1"] == 0.0 and perfect["change_skill"] == 1.0
    assert perfect["mean_frame_changed_l1"] == copy["mean_frame_changed_l1"] > 0


def test_reward_detection_scores_match_their_definitions():
    from cccad.world_probes import detection
    rng = np.random.default_rng(0)
    event = torch.from_numpy(rng.random(300) < 0.1)
    score = torch.from_numpy(np.round(rng.normal(size=300) + 1.5 * event.numpy(), 1))  # rounded: ties
    got = detection(score, event)
    pos, neg = score[event], score[~event]
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert math.isclose(got["auc"], float(pairs.mean()), rel_tol=1e-12) and 0.7 < got["auc"] < 1
    assert detection(event.double(), event) == {"auc": 1.0, "average_precision": 1.0}
    assert detection(-event.double(), event)["auc"] == 0.0
    assert detection(score, torch.zeros(300, dtype=torch.bool)) == {"auc": None, "average_precision": None}
    ranked = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([True, False, True, False])
    assert math.isclose(detection(*ranked)["average_precision"], (1 / 1 + 2 / 3) / 2)


def test_reward_probes_report_rewarded_unrewarded_and_detection(study):
    for stage in ("train-reward-predictor", "train-dynamics-reward-predictor"):
        m = metrics(study, f"{stage}-JEPA-assault-seed0")
        assert 0 < m["val_rewarded"] < m["val_samples"] and m["val_rewarded_share"] == m["val_rewarded"] / m["val_samples"]
        # the floor splits into its parts, weighted by their shares
        share = m["val_rewarded_share"]
        assert math.isclose(m["mean_reward_mse"], share * m["mean_reward_mse_on_rewarded"]
                            + (1 - share) * m["mean_reward_mse_on_unrewarded"], rel_tol=1e-4)
        for enc in ("jepa", "encoder_decoder"):
            s = m["per_encoder"][enc]
            assert 0 <= s["auc"] <= 1 and share <= 1 and 0 < s["average_precision"] <= 1
            assert math.isclose(s["reward_mse"], share * s["reward_mse_on_rewarded"]
                                + (1 - share) * s["reward_mse_on_unrewarded"], rel_tol=1e-4)


def test_vicreg_terms_and_the_jepa_variants(study):
    from cccad.stages.train_jepa import vicreg_terms
    collapsed = torch.ones(64, 16)
    variance, covariance = vicreg_terms(collapsed)
    assert math.isclose(variance.item(), 1 - 0.01, rel_tol=1e-5) and covariance.item() == 0.0
    spread = torch.from_numpy(np.random.default_rng(0).normal(size=(4096, 16))).float() * 2
    variance, covariance = vicreg_terms(spread)
    assert variance.item() == 0.0 and covariance.item() < 0.1  # sampling noise: 240 x (4 / 64)^2 / 16
    correlated = torch.cat([spread[:, :1]] * 16, dim=1)  # every dim the same: covariance 4 off the diagonal
    assert math.isclose(vicreg_terms(correlated)[1].item(), 16 * 15 * 4 ** 2 / 16, rel_tol=0.1)
    # the seed's JEPA trains without the terms (logged only), the VICReg variant with them; each
    # variant's probes read its own JEPA and the one encoder-decoder
    for variant, weight in (("JEPA", 0.0), ("JEPA-VICReg", 25.0)):
        cfg = run_config(study, f"train-jepa-{variant}-assault-seed0")
        assert cfg.world_model.vicreg_variance_weight == weight
        row = metrics(study, f"train-jepa-{variant}-assault-seed0")["history"][-1]
        extra = weight * row["variance_loss"] + cfg.world_model.vicreg_covariance_weight * row["covariance_loss"]
        assert math.isclose(row["loss"], row["prediction_loss"] + extra, rel_tol=1e-4), row
        probe = run_config(study, f"train-reward-predictor-{variant}-assault-seed0")
        assert probe.inputs.jepa_run.endswith(f"train-jepa-{variant}-assault-seed0")
        assert probe.inputs.encoder_decoder_run.endswith("train-encoder-decoder-assault-seed0")
    # the terms do what they are for: at the end the seed's latents have collapsed, the variant's have not
    spread = {v: np.mean([r["latent_spread"] for r in metrics(study, f"train-jepa-{v}-assault-seed0")["history"][-3:]])
              for v in ("JEPA", "JEPA-VICReg")}
    assert spread["JEPA"] < 0.05 and spread["JEPA-VICReg"] > 10 * spread["JEPA"], spread
    report = (study[1] / "report" / "report.md").read_text()
    assert "| assault | JEPA-VICReg - JEPA | JEPA reward AUC (train_reward_predictor) |" in report
    assert "Reward probes: JEPA against the encoder-decoder" in report and "| assault | JEPA-VICReg | jepa | true |" in report
