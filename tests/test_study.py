import json
import re

import numpy as np
import torch

from cccad.report import gather
from cccad.study import build_tasks
from conftest import TINY, cccad, write_yaml

STUDY = {**TINY, "study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0, 1], "stages": ["collect", "train", "evaluate"],
                           "variants": {"AD": {}}}}


def test_study_runs_end_to_end_then_is_cached_and_isolates_failures(tmp_path):
    study = write_yaml(tmp_path / "study.yaml", STUDY)
    runs = tmp_path / "runs"
    proc = cccad("local", study, "--runs", runs)
    root = runs / "tiny"
    names = ["collect-darkroom-seed0", "train-AD-darkroom-seed0", "evaluate-AD-darkroom-seed0",
             "collect-darkroom-seed1", "train-AD-darkroom-seed1", "evaluate-AD-darkroom-seed1"]
    for name in names:
        m = json.loads((root / name / "metrics.json").read_text())
        assert m["stage"] == name.split("-")[0]
        manifest = json.loads((root / name / "manifest.json").read_text())
        assert len(manifest["code"]["commit"]) == 40 and manifest["packages"]["torch"].startswith("2.13.0")
    ev = json.loads((root / "evaluate-AD-darkroom-seed0" / "metrics.json").read_text())
    assert len(ev["return_curve"]) == 4 and 0 <= ev["final_normalised_return"] <= 1
    assert str(root) in proc.stdout.splitlines()[-1]
    # the seeds really differ
    c0 = json.loads((root / "collect-darkroom-seed0" / "metrics.json").read_text())["return_curve"]
    c1 = json.loads((root / "collect-darkroom-seed1" / "metrics.json").read_text())["return_curve"]
    assert c0 != c1

    # the report: mean and 95% interval over both seeds, as a reader would compute them
    report_file = root / "report" / "report.md"
    assert proc.stdout.splitlines()[-1] == f"report: {report_file}"
    finals = [json.loads((root / f"evaluate-AD-darkroom-seed{s}" / "metrics.json").read_text())["final_normalised_return"]
              for s in (0, 1)]
    half = 12.706 * np.std(finals, ddof=1) / np.sqrt(2)  # Student t, 1 degree of freedom
    report = report_file.read_text()
    assert f"| darkroom | AD | 2/2 | {np.mean(finals):.3f} ± {half:.3f} |" in report, report
    assert "6 of 6 runs complete." in report
    for plot in ("in_context-darkroom.png", "loss-train-darkroom.png", "collect-darkroom.png"):
        assert f"]({plot})" in report and (root / "report" / plot).stat().st_size > 5000
    assert re.search(r"Code of the complete runs: `[0-9a-f]{12}(\+dirty)?` \(6 runs\)", report)
    # one loss threshold for both seeds: 90% of the way from chance to the higher of their lowest
    # trailing means of 5 logged losses
    trains = [json.loads((root / f"train-AD-darkroom-seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
    lowest = [min(np.mean(v[max(0, i - 4):i + 1]) for i in range(len(v))) for v in
              ([r["loss"] for r in m["history"]] for m in trains)]
    threshold = np.log(5) - 0.9 * (np.log(5) - max(lowest))
    assert re.search(rf"\| darkroom \| AD \| 2/2 \| [0-9.± ]+ \| {np.log(5):.4f} ± 0.0000 \| {threshold:.4f} ± 0.0000 \| "
                     r"\d+ ± \d+ \| – \|", report), report

    again = cccad("local", study, "--runs", runs)
    assert again.stdout.count("[cached]") == 6 and "[run]" not in again.stdout

    # seed 1's training breaks (its latest checkpoint is another config's) while seed 0's
    # evaluation is due again: seed 0 finishes, seed 1's evaluation is blocked, and the failure is named
    (root / "evaluate-AD-darkroom-seed0" / "metrics.json").unlink()
    train1 = root / "train-AD-darkroom-seed1"
    for name in ("metrics.json", "model.pt"):
        (train1 / name).unlink()
    latest = sorted((train1 / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(latest, weights_only=True)
    torch.save({**state, "config_hash": "another"}, latest)
    proc = cccad("local", study, "--runs", runs, check=False)
    assert proc.returncode == 1
    assert "[done]    evaluate-AD-darkroom-seed0" in proc.stdout
    assert "[FAILED]  train-AD-darkroom-seed1" in proc.stdout
    assert "[blocked] evaluate-AD-darkroom-seed1" in proc.stdout
    assert "[cached]  collect-darkroom-seed1" in proc.stdout
    assert f"{latest}: written by a different config" in (train1 / "log.txt").read_text()
    assert (train1 / "log.txt").read_text().rstrip().splitlines()[-1].startswith("cccad: task ended: exit code 2")
    # the report averages the one complete seed, says so, and names the two runs missing
    report = report_file.read_text()
    assert f"| darkroom | AD | 1/2 | {finals[0]:.3f} |" in report
    assert f"- `train-AD-darkroom-seed1`: incomplete: started and did not finish; see {train1 / 'log.txt'}" in report
    assert "- `evaluate-AD-darkroom-seed1`: blocked: needs train-AD-darkroom-seed1" in report
    assert "4 of 6 runs complete." in report

    # the study changes (a training key): each training and evaluation folder holds another
    # config's run, so it is moved aside, kept, and the task runs afresh (seed 1's bad checkpoint
    # goes with its folder); the collections are cached
    old_hash = json.loads((root / "train-AD-darkroom-seed0" / "metrics.json").read_text())["config_hash"]
    proc = cccad("local", study, "--runs", runs, "train.lr=0.002")
    assert proc.stdout.count("[cached]") == 2 and proc.stdout.count("[done]") == 4, proc.stdout
    kept = root / ".replaced" / f"train-AD-darkroom-seed0-{old_hash}"
    assert f"train-AD-darkroom-seed0: its folder held a run of another config (hash {old_hash}); moved to {kept}" in proc.stdout
    assert json.loads((kept / "metrics.json").read_text())["config_hash"] == old_hash
    assert sorted(p.name.rsplit("-", 1)[0] for p in (root / ".replaced").iterdir()) == sorted(
        f"{stage}-AD-darkroom-seed{s}" for stage in ("train", "evaluate") for s in (0, 1))
    new_hash = json.loads((root / "train-AD-darkroom-seed1" / "metrics.json").read_text())["config_hash"]
    assert new_hash != old_hash
    assert "6 of 6 runs complete." in (root / "report" / "report.md").read_text()


def test_harder_envs_run_through_the_same_stages(tmp_path):
    study = write_yaml(tmp_path / "study.yaml", {
        **TINY, "collect": {"streams_per_task": 1, "episodes": 8},
        "evaluate": {"episodes": 2, "streams_per_task": 1},
        "study": {"name": "hard", "envs": ["darkroom_hard", "dark_key_to_door"], "seeds": [0],
                  "stages": ["collect", "train", "evaluate"], "variants": {"AD": {}}}})
    cccad("local", study, "--runs", tmp_path / "runs")
    for env, n_test, best in (("darkroom_hard", 29, 1.0), ("dark_key_to_door", 648, 2.0)):
        ev = json.loads((tmp_path / "runs" / "hard" / f"evaluate-AD-{env}-seed0" / "metrics.json").read_text())
        assert ev["n_test_tasks"] == n_test and len(ev["return_curve"]) == 2
        assert 0 <= ev["final_return"] <= best


def test_compressed_ad_study_graph(darkroom_study):
    """collect -> pretrain_encoder -> train (4 variants) -> evaluate, probe: the smoke study's graph."""
    _, root, proc = darkroom_study
    variants = ["AD", "CompressedAD-random", "CompressedAD-reconstruction", "CompressedAD-finetuned", "CompressedAD-frozen"]
    pre = root / "pretrain-encoder-darkroom-seed0"
    assert (pre / "encoder-pretrained-final.pt").is_file()
    for v in variants:
        train_log = (root / f"train-{v}-darkroom-seed0" / "log.txt").read_text()
        assert (f"from {pre.resolve()}/encoder-pretrained-final.pt" in train_log) == v.endswith(("finetuned", "frozen"))
        assert ("encoder frozen" in train_log) == v.endswith("frozen")
        assert ("a reconstruction head, weight 1.0" in train_log) == v.endswith("reconstruction")
        ev = json.loads((root / f"evaluate-{v}-darkroom-seed0" / "metrics.json").read_text())
        # 4 episodes x 20 steps = 80 transitions: a CompressedAD window of 6 latents + 18 recent
        # compresses a 12-transition chunk once the 18 fill, then every 12 steps
        assert ev["compressions"] == (0 if v == "AD" else (80 - 18 + 11) // 12)
        # the memory controls, each scored like the normal condition, with its standard error
        assert set(ev["controls"]) == ({"recent_only"} if v == "AD" else {"no_latents", "foreign_latents"})
        assert ev["streams"] == 8 and 0 <= ev["final_normalised_return_se"] < 1
        assert all(0 <= c["final_normalised_return"] <= 1 for c in ev["controls"].values())
        probe = json.loads((root / f"probe-{v}-darkroom-seed0" / "metrics.json").read_text())
        assert set(probe["per_depth"]) == {"1", "2", "3"}
        assert set(probe["per_depth"]["1"]) == ({"uncompressed"} if v == "AD" else {"latent", "uncompressed"})
    assert proc.stdout.count("[done]") == 1 + 1 + 3 * len(variants)
    recon = json.loads((root / "train-CompressedAD-reconstruction-darkroom-seed0" / "metrics.json").read_text())
    rows = [r for r in recon["history"] if "reconstruction" in r]
    assert rows and rows[-1]["reconstruction"] < rows[0]["reconstruction"]  # the auxiliary loss is learned
    report = (root / "report" / "report.md").read_text()
    for pair in ("CompressedAD-finetuned - CompressedAD-random", "CompressedAD-reconstruction - CompressedAD-random",
                 "CompressedAD-random - AD"):
        assert f"| darkroom | {pair} | final normalised return (evaluate) | 1 |" in report, report
    # steps to a threshold compare within a model kind (whose runs share the threshold), not across
    # kinds; AD has no latents to probe
    file = darkroom_study[0]
    train = {r.task.variant: r.metrics for r in gather(build_tasks(file, [], root.parent)[1]) if r.task.stage == "train"}
    assert train["AD"]["loss_threshold"] != train["CompressedAD-random"]["loss_threshold"]
    assert train["CompressedAD-finetuned"]["loss_threshold"] == train["CompressedAD-random"]["loss_threshold"] is not None
    steps = train["CompressedAD-finetuned"]["steps_to_loss"] - train["CompressedAD-random"]["steps_to_loss"]
    assert f"| darkroom | CompressedAD-finetuned - CompressedAD-random | steps to loss (train) | 1 | {steps} |" in report
    assert "| CompressedAD-random - AD | mean loss (train) | 1 |" in report
    assert "| CompressedAD-random - AD | steps to loss" not in report
    assert "| CompressedAD-random - AD | goal probe" not in report
    # the goal probe, a row per depth: the run's own accuracies
    probe = json.loads((root / "probe-CompressedAD-random-darkroom-seed0" / "metrics.json").read_text())
    for d in ("1", "2", "3"):
        scores = probe["per_depth"][d]
        assert (f"| darkroom | CompressedAD-random | {d} ({int(d) * probe['chunk_len']} transitions) | 1/1 | "
                f"{scores['latent']['accuracy']:.3f} | {scores['uncompressed']['accuracy']:.3f} |") in report, report


def test_a_variant_asking_for_an_unlisted_stage_is_refused(tmp_path):
    study = write_yaml(tmp_path / "study.yaml", {**TINY, "study": {
        "name": "bad", "stages": ["collect", "train"],
        "variants": {"CAD": {"model.kind": "compressed_ad", "inputs.pretrained_encoder_path": "@pretrain_encoder"}}}})
    proc = cccad("local", study, "--runs", tmp_path / "runs", check=False)
    assert proc.returncode == 2 and "inputs.pretrained_encoder_path: '@pretrain_encoder' but study.stages does not list" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_variant_that_changes_a_shared_stage_gets_its_own_run_of_it(tmp_path):
    """Pre-training is shared by the variants that read it, unless a variant changes what decides it
    (here the encoder's attention): then that variant pre-trains its own encoder, its training reads
    that one, and the report shows both pre-trainings and compares them."""
    study = write_yaml(tmp_path / "study.yaml", {**TINY, "study": {
        "name": "enc", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "pretrain_encoder", "train"],
        "variants": {"self": {"model.kind": "compressed_ad", "inputs.pretrained_encoder_path": "@pretrain_encoder"},
                     "frozen": {"model.kind": "compressed_ad", "train.freeze_encoder": True,
                                "inputs.pretrained_encoder_path": "@pretrain_encoder"},
                     "cross": {"model.kind": "compressed_ad", "model.encoder": "cross",
                               "inputs.pretrained_encoder_path": "@pretrain_encoder"}},
        "comparisons": ["cross - self", "frozen - self"]}})
    proc = cccad("local", study, "--runs", tmp_path / "runs")
    root = tmp_path / "runs" / "enc"
    shared, own = root / "pretrain-encoder-darkroom-seed0", root / "pretrain-encoder-cross-darkroom-seed0"
    assert sorted(p.name for p in root.glob("pretrain-*")) == [own.name, shared.name]
    for variant, pre in (("self", shared), ("frozen", shared), ("cross", own)):
        log = (root / f"train-{variant}-darkroom-seed0" / "log.txt").read_text()
        assert f"from {pre.resolve()}/encoder-pretrained-final.pt" in log
    encoders = {pre: torch.load(pre / "encoder-pretrained-final.pt", weights_only=True)["config"]["model"]["encoder"]
                for pre in (shared, own)}
    assert encoders == {shared: "self", own: "cross"}
    assert proc.stdout.count("[done]") == 1 + 2 + 3
    report = (root / "report" / "report.md").read_text()
    corr = {pre: json.loads((pre / "metrics.json").read_text())["final_val_correlation"] for pre in (shared, own)}
    assert f"| darkroom | shared | 1/1 | {corr[shared]:.3f} |" in report, report
    assert f"| darkroom | cross | 1/1 | {corr[own]:.3f} |" in report, report
    # compared where the two variants pre-trained apart, not where they share one pre-training
    assert (f"| darkroom | cross - self | validation correlation (pretrain_encoder) | 1 | "
            f"{corr[own] - corr[shared]:.3f} |") in report, report
    assert "| frozen - self | validation correlation" not in report


def test_one_agent_serves_every_seed_when_the_seed_does_not_decide_it(tmp_path):
    """With atari.agent_seed, train_agent's outputs do not depend on the study's seed: one run, which
    every seed's collect plays (each collecting its own episodes); a cluster array waits for all of
    it (afterok) where the rows do not line up. Without it, an agent per seed."""
    from cccad.cluster import load_profile, plan
    from cccad.study import build_tasks
    from conftest import CONFIGS, ROOT
    smoke = CONFIGS / "studies" / "worldmodel_smoke.yaml"
    _, tasks = build_tasks(smoke, ["study.seeds=[0,1,2]", "atari.agent_seed=0"], tmp_path)
    agents = [t for t in tasks if t.stage == "train_agent"]
    collects = [t for t in tasks if t.stage == "collect"]
    assert [t.name for t in agents] == ["train-agent-assault-seed0"]
    assert [t.config.seed for t in collects] == [0, 1, 2] and all(t.needs == agents for t in collects)
    assert {t.config.inputs.agent for t in collects} == {str((agents[0].run_dir / "agent").resolve())}
    arrays = {a.name: a for a in plan(tasks, load_profile(ROOT / "slurm" / "profiles" / "local.yaml"))}
    assert arrays["collect"].dependency({"train_agent": "7", "collect": "8"}) == "afterok:7"
    assert arrays["train_encoder_decoder"].dependency({"collect": "8"}) == "aftercorr:8"
    _, tasks = build_tasks(smoke, ["study.seeds=[0,1]"], tmp_path)
    assert [t.name for t in tasks if t.stage == "train_agent"] == ["train-agent-assault-seed0", "train-agent-assault-seed1"]
    arrays = {a.name: a for a in plan(tasks, load_profile(ROOT / "slurm" / "profiles" / "local.yaml"))}
    assert arrays["collect"].dependency({"train_agent": "7"}) == "aftercorr:7"
