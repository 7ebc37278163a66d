"""CompressedAD: bounded context, cached streaming, encoder pre-training, loading and freezing."""
import json

import pytest
import torch

from cccad.config import ModelConfig
from cccad.envs.darkroom import N_ACTIONS, OBS_DIM
from cccad.models.ad import ADTransformer
from cccad.models.compressed_ad import CompressedAD, WithReconstruction
from cccad.models.context import CompressedWindow, History, SlidingWindow
from cccad.models.policies import PRETRAINED_FILE, build_model
from cccad.checkpoint import FINAL_MODEL
from conftest import TINY, cccad, write_yaml

SMALL = ModelConfig(kind="compressed_ad", recent_len=16, n_embd=16, n_layer=2, n_head=2, n_latent=4,
                    chunk_len=6, max_compression_depth=3, encoder_n_layer=1)


def random_history(n, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = History(n, steps, OBS_DIM, N_ACTIONS, scale=8.0, device="cpu")
    h.states[:] = torch.randint(0, 9, h.states.shape, generator=g)
    h.actions[:] = torch.randint(0, N_ACTIONS, h.actions.shape, generator=g)
    h.rewards[:] = torch.randint(0, 2, h.rewards.shape, generator=g).float()
    h.next_states[:] = h.states[:, 1:]
    return h


def test_context_of_any_length_costs_a_bounded_number_of_tokens():
    torch.manual_seed(0)
    model = CompressedAD(SMALL, OBS_DIM, N_ACTIONS).eval()
    window = SMALL.n_latent + SMALL.recent_len
    steps = 15 * window  # many windows
    ctx = CompressedWindow(model, random_history(3, steps))
    depths = set()
    for t in range(steps):
        ctx.logits(t)
        tokens = ctx.cache[0]["n"]  # what the decoder attends to now
        assert tokens <= window, (t, tokens)
        assert ctx.depth <= SMALL.max_compression_depth
        depths.add(ctx.depth)
    assert depths == {0, 1, 2, 3}
    # one compression per chunk_len steps once the recent part first filled
    assert ctx.compressions == (steps - SMALL.recent_len + SMALL.chunk_len - 1) // SMALL.chunk_len


def test_cached_streaming_equals_recomputing_the_window():
    """The KV cache is an optimisation only: each step's logits equal a fresh forward pass."""
    torch.manual_seed(0)
    steps = 90
    h = random_history(2, steps, seed=1)
    comp = CompressedAD(SMALL, OBS_DIM, N_ACTIONS).eval()
    ad = ADTransformer(ModelConfig(context_len=30, n_embd=16, n_layer=2, n_head=2), OBS_DIM, N_ACTIONS).eval()
    cw, sw = CompressedWindow(comp, h), SlidingWindow(ad, h)
    with torch.no_grad():
        for t in range(steps):
            got = cw.logits(t)
            lo = cw.chunk_starts[0] if cw.chunk_starts else cw.recent
            x = h.features(lo, t + 1)
            n_chunk = cw.recent - lo
            want = comp.decode(x[:, n_chunk:], prefix=comp.latents(x[:, :n_chunk]))[:, -1]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            if t - cw.recent + 1 == SMALL.recent_len:  # a training-shaped window: forward() agrees too
                torch.testing.assert_close(got, comp(x)[:, -1], rtol=1e-4, atol=1e-5)
            got = sw.logits(t)
            want = ad(h.features(max(0, t - 29), t + 1))[:, -1]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_memory_controls_see_no_latents_or_another_streams():
    """Latents off: the recent transitions alone, as a depth-0 training window; another stream's
    latents: made from that stream's chunks of the same steps; AD cut to its recent part: a window
    of recent_len transitions."""
    torch.manual_seed(0)
    comp = CompressedAD(SMALL, OBS_DIM, N_ACTIONS).eval()
    own, other = random_history(2, 60, seed=2), random_history(2, 60, seed=3)
    off, foreign = CompressedWindow(comp, own, "none"), CompressedWindow(comp, own, "foreign", source=other)
    normal = CompressedWindow(comp, own)
    with torch.no_grad():
        for t in range(60):
            got_off, got_foreign, got_normal = off.logits(t), foreign.logits(t), normal.logits(t)
            recent = own.features(off.recent, t + 1)
            torch.testing.assert_close(got_off, comp.decode(recent)[:, -1], rtol=1e-4, atol=1e-5)
            if normal.depth:
                chunks = other.features(foreign.chunk_starts[0], foreign.recent)
                want = comp.decode(own.features(foreign.recent, t + 1, first_of_window=False),
                                   prefix=comp.latents(chunks))[:, -1]
                torch.testing.assert_close(got_foreign, want, rtol=1e-4, atol=1e-5)
                assert not torch.allclose(got_foreign, got_normal)  # another stream's latents change the policy
        assert normal.depth == SMALL.max_compression_depth
    ad = ADTransformer(ModelConfig(context_len=30, recent_len=10, n_embd=16, n_layer=2, n_head=2), OBS_DIM, N_ACTIONS).eval()
    cut = SlidingWindow(ad, own, window=10)
    with torch.no_grad():
        for t in range(40):
            torch.testing.assert_close(cut.logits(t), ad(own.features(max(0, t - 9), t + 1))[:, -1], rtol=1e-4, atol=1e-5)


def test_ad_window_moving_an_episode_at_a_time_holds_whole_recent_episodes():
    """Stride s: once full, the window drops its oldest s transitions at once and is recomputed,
    then appends to its cache; so each step acts from the transitions since the last move (between
    window - s + 1 and window of them), exactly as a fresh forward pass over them would."""
    torch.manual_seed(0)
    W, s, steps = 12, 4, 60
    ad = ADTransformer(ModelConfig(context_len=W, n_embd=16, n_layer=2, n_head=2), OBS_DIM, N_ACTIONS).eval()
    h = random_history(2, steps, seed=4)
    ctx, starts = SlidingWindow(ad, h, stride=s), []
    with torch.no_grad():
        for t in range(steps):
            got = ctx.logits(t)
            start = 0 if t < W else s * -(-(t - W + 1) // s)  # the smallest multiple of s that fits t in
            assert ctx.start == start and ctx.cache[0]["n"] == t - start + 1
            torch.testing.assert_close(got, ad(h.features(start, t + 1))[:, -1], rtol=1e-4, atol=1e-5)
            starts.append(start)
    assert min(t - a + 1 for t, a in enumerate(starts) if t >= W) == W - s + 1
    assert sorted(set(starts)) == list(range(0, steps - W + 1, s))  # one recomputation per s steps once full
    with pytest.raises(ValueError, match="stride 13 must be within"):
        SlidingWindow(ad, h, stride=13)
    # the stride decides AD's evaluations, and at 1 what they always did (their identity unchanged)
    from cccad.config import load_config
    from cccad.stages.evaluate import decided_by
    stride_of = lambda *o: decided_by(load_config(None, list(o)))["evaluate"].get("window_stride")  # noqa: E731
    assert stride_of("model.kind=ad") is None and stride_of("model.kind=ad", "evaluate.window_stride=20") == 20
    assert stride_of("model.kind=compressed_ad", "evaluate.window_stride=20") is None


def test_learning_speed_reads_the_history():
    from cccad.stages.train import learning_speed
    loss = [1.6, 1.5, 1.4, 1.2, 1.0, 0.9, 0.8, 0.8, 0.7, 0.7, 0.9, 0.5, 0.9, 0.5, 0.9, 0.5]
    history = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(loss)]
    history[5]["eval_normalised_return"], history[9]["eval_normalised_return"] = 0.3, 0.6
    history[-1]["val_loss"] = 0.55
    speed = learning_speed(history)
    assert speed["mean_loss"] == pytest.approx(sum(loss) / len(loss)) and speed["mean_eval_return"] == pytest.approx(0.45)
    assert speed["final_val_loss"] == pytest.approx(0.55)
    # a zigzag of +-0.1: its centred mean of 5 is +-0.02, so it oscillates by 0.08 about it
    zigzag = learning_speed([{"step": i, "loss": 1.0 + 0.1 * (-1) ** i} for i in range(40)])
    assert zigzag["loss_oscillation"] == pytest.approx(0.08)
    flat = learning_speed([{"step": r["step"], "loss": 1.5} for r in history])
    assert flat["loss_oscillation"] == pytest.approx(0) and flat["mean_eval_return"] is None
    # with a reconstruction loss: its logged action part
    joint = [{**r, "loss": r["loss"] + 0.3, "action_loss": r["loss"]} for r in history]
    joint[-1].update(val_loss=0.9, val_action_loss=0.55)
    assert learning_speed(joint)["mean_loss"] == pytest.approx(speed["mean_loss"])
    assert learning_speed(joint)["final_val_loss"] == pytest.approx(0.55)


def test_the_reconstruction_variant_logs_its_action_loss_on_every_batch(tmp_path):
    """Validation averages each stat over the batches that have it: the action part must be on
    every batch (a depth-0 window has no reconstruction), so it equals the plain action loss."""
    from cccad.config import load_config
    from cccad.stages.train import action_loss, with_reconstruction_loss
    cfg = load_config(None, ["model.kind=compressed_ad", "model.n_embd=16", "model.n_layer=1", "model.n_head=2",
                             "model.encoder_n_layer=1", "model.recent_len=4", "model.chunk_len=4", "model.n_latent=2",
                             "train.reconstruction_weight=2.0"])
    torch.manual_seed(0)
    policy = build_model(cfg)
    model = WithReconstruction(policy, cfg.pretrain, OBS_DIM, N_ACTIONS).eval()
    for depth in (0, 2):
        h = random_history(3, 4 * depth + 4, seed=depth)
        batch = {"features": h.features(0, 4 * depth + 4), "actions": h.actions}
        with torch.no_grad():
            total, stats = with_reconstruction_loss(2.0)(model, batch)
            plain, _ = action_loss(policy, batch)
        torch.testing.assert_close(stats["action_loss"], plain)
        assert ("reconstruction" in stats) == (depth > 0)
        if depth:
            torch.testing.assert_close(total, plain + 2.0 * stats["reconstruction"])


def test_learning_speed_thresholds_are_shared_by_the_runs_of_an_env_and_model_kind():
    from cccad.config import load_config
    from cccad.stages.train import across_runs
    cad, ad = load_config(None, ["model.kind=compressed_ad"]), load_config(None, ["model.kind=ad"])

    def run(losses, returns):
        history = [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]
        for i, r in returns.items():
            history[i]["eval_normalised_return"] = r
        return {"chance_loss": 1.6, "history": history}

    fast, slow = run([1.6] * 4 + [0.9] * 12, {3: 0.5, 15: 0.9}), run([1.6] * 10 + [1.2] * 6, {3: 0.1, 15: 0.5})
    flat, other = run([1.6] * 16, {15: 0.0}), run([1.6] * 16, {})
    empty = {"chance_loss": 1.6, "history": []}
    runs = [(cad, fast), (cad, slow), (ad, flat)]
    across_runs(runs)
    # both CompressedAD runs reached a smoothed loss of 1.2 (slow's lowest) and a return of 0.5
    # (slow's highest): thresholds 1.6 - 0.9 x 0.4 = 1.24 and 0.45
    assert fast["loss_threshold"] == slow["loss_threshold"] == pytest.approx(1.24)
    assert fast["return_threshold"] == slow["return_threshold"] == pytest.approx(0.45)
    # fast's trailing mean of 5 is (2 x 1.6 + 3 x 0.9) / 5 = 1.18 at its 7th row; slow's first <= 1.24 is 1.2, at its 15th
    assert (fast["steps_to_loss"], slow["steps_to_loss"]) == (70, 150)
    assert (fast["steps_to_return"], slow["steps_to_return"]) == (40, 160)
    # AD is measured apart, and it learned nothing: no threshold
    assert flat["loss_threshold"] is None and flat["steps_to_loss"] is None and flat["steps_to_return"] is None
    across_runs([(cad, fast), (cad, other)])  # a run without in-training evaluations: no return threshold
    assert fast["return_threshold"] is None and fast["steps_to_return"] is None and other["steps_to_return"] is None
    across_runs([(cad, fast), (cad, empty)])  # a run that logged nothing: no threshold, no error
    assert fast["loss_threshold"] is None and empty["steps_to_loss"] is None and empty["steps_to_return"] is None


def test_runs_from_before_the_thresholds_left_the_config_keep_their_identity():
    """The run and checkpoint hashes of every stage as they were when train.converged_loss and
    converged_return existed."""
    from cccad.config import load_config
    from cccad.runinfo import run_hash
    from cccad.stages import STAGES
    from cccad.trainer import resume_hash
    before = {(): {"pretrain_encoder": ("dc24b5e6c7e58227", "4048b51ef9ed04c1"), "train": ("36ea34eff38b335a", "60f49b03ad6b3251"),
                   "evaluate": ("57b3bffe543e281e", None), "probe": ("76ab831cbe2b0b31", None),
                   "train_jepa": ("89ced74266c29fa8", "3c2cad7bb5836f30"),
                   "train_encoder_decoder": ("32238f17d2ae61da", "955c595522888350")},
              # (its run hash changed since: its in-training evaluations' settings joined it; its checkpoints' did not)
              ("model.kind=compressed_ad", "train.eval_every=50"): {"train": (None, "5dde1cfdb2bbf284")}}
    for overrides, stages in before.items():
        cfg = load_config(None, list(overrides))
        for stage, (run, resume) in stages.items():
            assert run is None or run_hash(cfg, stage) == run, (overrides, stage)
            assert resume is None or resume_hash(STAGES[stage].decided_by(cfg)) == resume, (overrides, stage)


def test_in_training_evaluations_decide_a_training_runs_identity_not_its_checkpoints():
    """With train.eval_every, the evaluate keys its evaluations play by (episodes, greedy, batch
    size, and AD's window stride) make another run; its checkpoints still resume under them."""
    from cccad.config import load_config
    from cccad.runinfo import run_hash
    from cccad.stages import STAGES
    from cccad.trainer import resume_hash

    def hashes(*overrides):
        cfg = load_config(None, list(overrides))
        return run_hash(cfg, "train"), resume_hash(STAGES["train"].decided_by(cfg))

    for kind in ("ad", "compressed_ad"):
        base = hashes(f"model.kind={kind}", "train.eval_every=50")
        for key in ("evaluate.episodes=7", "evaluate.greedy=true", "evaluate.batch_size=64"):
            other = hashes(f"model.kind={kind}", "train.eval_every=50", key)
            assert other[0] != base[0] and other[1] == base[1], (kind, key)
        # the final evaluation's stream count is not the in-training one (train.eval_streams_per_task)
        assert hashes(f"model.kind={kind}", "train.eval_every=50", "evaluate.streams_per_task=3") == base
        # without in-training evaluations the evaluate keys decide nothing of a training run
        assert hashes(f"model.kind={kind}", "evaluate.episodes=7") == hashes(f"model.kind={kind}")
    # AD's window stride decides its evaluations; CompressedAD's window moves by its chunks
    ad = hashes("model.kind=ad", "train.eval_every=50")
    assert hashes("model.kind=ad", "train.eval_every=50", "evaluate.window_stride=20")[0] != ad[0]
    cad = hashes("model.kind=compressed_ad", "train.eval_every=50")
    assert hashes("model.kind=compressed_ad", "train.eval_every=50", "evaluate.window_stride=20") == cad


def test_training_windows_start_at_episodes_when_aligned():
    import numpy as np
    from cccad.data.histories import sample_windows
    steps = 600
    ds = {k: np.zeros((4, steps) + s, dtype=np.uint8) for k, s in (("states", (2,)), ("next_states", (2,)))}
    ds["rewards"] = np.zeros((4, steps), dtype=np.float32)
    ds["actions"] = np.tile(np.arange(steps) % 20 // 4, (4, 1)).astype(np.uint8)  # step t's action: (t mod 20) // 4
    for align, first_actions in ((20, {0}), (1, {0, 1, 2, 3, 4})):
        b = sample_windows(ds, np.arange(4), np.random.default_rng(0), 200, 60, slice(None), 8.0, align)
        assert set(b["actions"][:, 0].tolist()) == first_actions  # the action a window's first token predicts


def test_only_compressed_ad_aligns_its_windows_with_episodes():
    """AD acts on a window that slides a step at a time: its training windows start anywhere
    whatever train.align_to_episodes says, and the key is not part of its runs' identity."""
    from cccad.config import load_config
    from cccad.data.histories import window_align
    from cccad.models.policies import trained_by
    aligned = ["train.align_to_episodes=true", "env.horizon=20"]
    assert window_align(load_config(None, aligned + ["model.kind=compressed_ad"])) == 20
    assert window_align(load_config(None, aligned + ["model.kind=ad"])) == 1
    assert trained_by(load_config(None, aligned)) == trained_by(load_config(None, ["env.horizon=20"]))
    assert trained_by(load_config(None, aligned + ["model.kind=compressed_ad"])) != trained_by(
        load_config(None, ["env.horizon=20", "model.kind=compressed_ad"]))


# --------------------------------------------------------------------------- stages, through the CLI

COMPRESSED = {**TINY, "model": {**TINY["model"], "kind": "compressed_ad"}}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed")
    cfg = write_yaml(root / "compressed.yaml", COMPRESSED)
    cccad("run", "collect", "-c", cfg, "--out", root / "collect")
    data = root / "collect" / "dataset"
    cccad("run", "pretrain_encoder", "-c", cfg, "--out", root / "pretrain", f"inputs.dataset={data}")
    return cfg, data, root / "pretrain"


def test_pretraining_aligns_windows_as_compressed_ads_whatever_model_kind_its_config_holds(pretrained, tmp_path):
    """Pre-training is a stage the variants share, so a study's config for it holds the default
    model.kind (AD's); its windows are CompressedAD's encoder's all the same: with
    train.align_to_episodes they start at an episode's first step."""
    _, data, _ = pretrained
    tiny = write_yaml(tmp_path / "tiny.yaml", TINY)  # model.kind: ad
    cccad("run", "pretrain_encoder", "-c", tiny, "--out", tmp_path / "pre", f"inputs.dataset={data}",
          "train.align_to_episodes=true", "pretrain.pretrain_steps=10", "pretrain.curriculum=[{steps: 10, depths: [1]}]")
    assert "windows start at an episode's first step (every 20)" in (tmp_path / "pre" / "log.txt").read_text()


def test_pretraining_loss_falls_and_correlation_rises(pretrained):
    m = json.loads((pretrained[2] / "metrics.json").read_text())
    first, last = m["history"][0], m["history"][-1]
    assert last["loss"] < 0.6 * first["loss"], (first["loss"], last["loss"])
    assert first["correlation"] < 0.2 and last["correlation"] > 0.5, (first["correlation"], last["correlation"])
    assert m["final_val_correlation"] > 0.4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(str(pretrained[2] / "tb")).Reload().Tags()["scalars"]
    assert {"pretrain/loss", "pretrain/correlation", "lr"} <= set(tags)


def test_cross_attention_encoder_pretrains_too_and_is_not_loaded_into_a_self_attention_model(pretrained, tmp_path):
    cfg, data, _ = pretrained
    out = tmp_path / "cross"
    cccad("run", "pretrain_encoder", "-c", cfg, "--out", out, f"inputs.dataset={data}", "model.encoder=cross")
    m = json.loads((out / "metrics.json").read_text())
    first, last = m["history"][0], m["history"][-1]
    assert last["loss"] < 0.6 * first["loss"] and last["correlation"] > 0.5, (first, last)
    proc = cccad("run", "train", "-c", cfg, "--out", tmp_path / "t", f"inputs.dataset={data}",
                 f"inputs.pretrained_encoder_path={out / PRETRAINED_FILE}", check=False)
    assert proc.returncode == 2 and "trained with model.encoder='cross', this config has 'self'" in proc.stderr


def test_curriculum_draws_only_the_allowed_depths_of_each_phase(pretrained):
    m = json.loads((pretrained[2] / "metrics.json").read_text())
    drawn = m["samples_per_depth_drawn_this_process"]
    for phase, allowed in zip(drawn, [{"1"}, {"1", "2"}, {"1", "2", "3"}]):
        used = {d for d, n in phase.items() if n}
        assert used == allowed, (phase, allowed)  # every allowed depth drawn, no other
        assert sum(phase.values()) == 50 * 16
    assert drawn == m["samples_per_depth_planned"]


def test_pretrained_checkpoint_has_exactly_the_seed_keys(pretrained):
    state = torch.load(pretrained[2] / PRETRAINED_FILE, weights_only=True)
    assert set(state) == {"encoder_state_dict", "embed_context_state_dict", "embed_ln_state_dict",
                          "global_step", "config"}
    assert state["global_step"] == 150 and state["config"]["model"]["n_latent"] == 6


@pytest.mark.parametrize("override,shapes", [("model.n_latent=4", "(6, 32), this model needs (4, 32)"),
                                             ("model.n_embd=16", "(6, 32), this model needs (6, 16)")])
def test_loading_into_another_model_names_the_tensor(tmp_path, pretrained, override, shapes):
    cfg, data, pre = pretrained
    proc = cccad("run", "train", "-c", cfg, "--out", tmp_path / "t", f"inputs.dataset={data}",
                 f"inputs.pretrained_encoder_path={pre / PRETRAINED_FILE}", override, check=False)
    assert proc.returncode == 2 and f"tensor 'encoder.queries' has shape {shapes}" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "t" / FINAL_MODEL).exists()


def test_frozen_encoder_stays_bit_identical_and_finetuned_one_moves(tmp_path, pretrained):
    cfg, data, pre = pretrained
    start = torch.load(pre / PRETRAINED_FILE, weights_only=True)["encoder_state_dict"]
    for frozen in (True, False):
        out = tmp_path / f"frozen{frozen}"
        proc = cccad("run", "train", "-c", cfg, "--out", out, f"inputs.dataset={data}", "train.steps=30",
                     f"inputs.pretrained_encoder_path={pre / PRETRAINED_FILE}", f"train.freeze_encoder={str(frozen).lower()}")
        assert "loaded pre-trained encoder (" in proc.stdout and "step 150" in proc.stdout
        after = torch.load(out / FINAL_MODEL, weights_only=True)["model_state_dict"]
        same = [torch.equal(after[f"encoder.{k}"], v) for k, v in start.items()]
        assert all(same) if frozen else not any(same), (frozen, same)


def test_curriculum_beyond_max_depth_is_refused_naming_the_key(tmp_path, pretrained):
    cfg, data, _ = pretrained
    proc = cccad("run", "pretrain_encoder", "-c", cfg, "--out", tmp_path / "p", f"inputs.dataset={data}",
                 "model.max_compression_depth=2", check=False)
    assert proc.returncode == 2 and "pretrain.curriculum: uses depth 3, beyond model.max_compression_depth=2" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_training_curves_draw_the_action_part_of_a_loss_with_reconstruction(tmp_path):
    """The report's training curve of a run whose loss adds a reconstruction term is its action
    part (as the learning-speed table is); a run without one, its loss."""
    from torch.utils.tensorboard import SummaryWriter
    from cccad.report import scalars
    for name, tags in (("reconstruction", ("train/loss", "train/action_loss", "val/action_loss")), ("plain", ("train/loss",))):
        with SummaryWriter(str(tmp_path / name / "tb")) as writer:
            for step in (10, 20):
                for i, tag in enumerate(tags):
                    writer.add_scalar(tag, float(i + step), step)
    tag, steps, values = scalars(tmp_path / "reconstruction")
    assert tag == "train/action_loss" and steps.tolist() == [10, 20] and values.tolist() == [11, 21]
    assert scalars(tmp_path / "plain")[0] == "train/loss"


def test_the_report_states_a_studys_time_from_its_runs():
    """Run-minutes summed, and the wall time from the first start to the last end (time zones
    as the manifests give them)."""
    from cccad.report import time_spent
    text = time_spent([("2026-12-07T04:00:00+0000", 600.0), ("2026-12-07T05:00:00+0100", 1200.0),
                       ("2026-12-07T04:30:00+0000", 3000.0)])
    # 10 + 20 + 50 run-minutes; from 04:00 to 04:30 + 50 min (the second run: 04:00 UTC + 20 min)
    assert "80 run-minutes in all, 80 minutes from the first run's start to the last one's end" in text
    assert time_spent([]) == ""
