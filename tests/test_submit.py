"""cccad submit / status: cluster profiles, the planned arrays, and studies run on a real local
SLURM cluster (started here, with its own ports and state) through submitit."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TINY, cccad, start_cluster, stop_cluster, write_yaml

LOCAL = ROOT / "slurm" / "profiles" / "local.yaml"
FULL_VARIANTS = yaml.safe_load((ROOT / "configs" / "studies" / "full.yaml").read_text())["study"]["variants"]
VARIANTS = tuple(FULL_VARIANTS)  # the smoke study's, which it inherits from the full study
TWO = ("AD", "CompressedAD-finetuned")
# the Darkroom graph, written out: array -> the arrays it waits for (aftercorr)
GRAPH = {"collect": [], "pretrain_encoder": ["collect"],
         **{f"train-{v}": ["collect"] + (["pretrain_encoder"] if v.endswith(("finetuned", "frozen")) else [])
            for v in VARIANTS},
         **{f"evaluate-{v}": [f"train-{v}"] for v in VARIANTS},
         **{f"probe-{v}": ["collect", f"train-{v}"] for v in VARIANTS}}

NICE = {"collect": 3000, "pretrain_encoder": 2000, "train": 1000, "evaluate": 0, "probe": 0}


def study(tmp_path, seeds=(0, 1), variants=None, **sections):
    st = {"name": "tiny", "envs": ["darkroom"], "seeds": list(seeds), **({"variants": variants} if variants else {})}
    return write_yaml(tmp_path / "study.yaml", {**TINY, "study": st, **sections})


def test_folded_array_records_expand_to_their_tasks():
    from cccad.cluster import folded
    assert folded("7_[1-3,5%4]") == ["7_1", "7_2", "7_3", "7_5"] and folded("12_[0]") == ["12_0"]


def test_array_task_refuses_an_upstream_run_made_under_another_config(tmp_path):
    """A SLURM task starts once its upstream tasks ended well, but their runs may since have become
    another config's (the study or the code changed in between): it fails, naming the upstream,
    rather than build on them."""
    from cccad.cluster import StageJob
    runs = tmp_path / "runs"
    made = study(tmp_path, seeds=(0,), variants={"AD": {}}, collect={**TINY["collect"], "episodes": 30})
    cccad("local", made, "study.stages=[collect]", "--runs", runs)
    assert StageJob(str(made), ["study.stages=[collect]"], str(runs), "collect-darkroom-seed0").task().complete()
    changed = write_yaml(tmp_path / "changed.yaml", {**yaml.safe_load(Path(made).read_text()),
                                                      "collect": {**TINY["collect"], "episodes": 31}})
    with pytest.raises(RuntimeError, match="train-AD-darkroom-seed0: upstream collect-darkroom-seed0 is not complete "
                                           "under this study's config and code"):
        StageJob(str(changed), [], str(runs), "train-AD-darkroom-seed0")()
    assert not (runs / "tiny" / "train-AD-darkroom-seed0").exists()  # nothing started
    # cccad status says so: the upstream run is another config's (submitting again moves it aside)
    from cccad.cluster import status
    states = {row["task"]: row["state"] for row in status(str(changed), [], str(runs))}
    assert states["collect-darkroom-seed0"] == "stale" and states["train-AD-darkroom-seed0"] == "not submitted"


@pytest.mark.parametrize("profile, message", [
    ({"defaults": {"gpu_per_task": 1}}, "unknown key 'defaults.gpu_per_task' (did you mean gpus_per_task?)"),
    ({"stages": {"trian": {"time_min": 5}}}, "stages.trian: unknown stage"),
    ({"stages": {"train": {"time_min": 0}}}, "stages.train.time_min: must be at least 1"),
    ({"defaults": {"mem_gb": "lots"}}, "defaults.mem_gb: expected a number, got 'lots'"),
    ({"sbatch": {"dependency": "afterok:1"}}, "sbatch.dependency: is set by cccad submit"),
    ({"later_stages_first": True, "sbatch": {"nice": 10}}, "sbatch.nice: is set by cccad submit (later_stages_first)"),
    ({"array_parallelism": 0}, "array_parallelism: must be at least 1"),
    ({"stages": {"collect": {"processes": 2}}}, "stages.collect.processes: this stage does not train"),
    ({"stages": {"train": {"nodes": 2, "min_nodes": 3}}}, "stages.train.min_nodes: must be between 1 and nodes (2)"),
])
def test_bad_profile_is_refused_naming_file_and_key(tmp_path, profile, message):
    path = write_yaml(tmp_path / "profile.yaml", profile)
    proc = cccad("submit", study(tmp_path), "--cluster", path, "--runs", tmp_path / "runs", "--dry-run", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"cccad: error: {path}: {message}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_one_array_per_stage_and_variant_with_the_graph(tmp_path):
    out = cccad("submit", study(tmp_path), "--cluster", LOCAL, "--runs", tmp_path / "runs", "--dry-run").stdout
    n = 2 * (2 + 3 * len(VARIANTS))  # 2 seeds x (collect, pretrain, and train, evaluate, probe per variant)
    assert f"{n} tasks, {n} to submit in {n // 2} arrays" in out
    found, nice = {}, {}
    for name, opts in re.findall(r"^(\S+)\s+2  .*\n\s+(--array.*)$", out, re.M):
        assert opts.startswith("--array=0-1%4"), opts
        dep = re.search(r"--dependency=aftercorr:(\S+)", opts)
        found[name] = [d.strip("<>") for d in dep.group(1).split(":")] if dep else []
        nice[name] = int(re.search(r"--nice=(\d+)", opts).group(1)) if "--nice" in opts else 0
    assert found == GRAPH, found
    # later stages first (local.yaml): 1,000 of nice per stage that may follow an array
    assert nice == {name: NICE[name.split("-")[0]] for name in GRAPH}, nice
    assert "0: darkroom seed 0, 1: darkroom seed 1" in out
    report = re.search(r"^report\s+1  .*\n\s+--dependency=afterany:(\S+)", out, re.M)
    assert report and sorted(d.strip("<>") for d in report.group(1).split(":")) == sorted(GRAPH)
    assert not (tmp_path / "runs" / "tiny" / ".submit").exists()  # nothing submitted


# ----------------------------------------------------------------------------- on the cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = start_cluster(tmp_path_factory.mktemp("slurm"), 27817)
    yield env
    stop_cluster(env)


def submit(env, study_file, runs, *extra, profile=LOCAL) -> str:
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cccad"), "submit", str(study_file), "--cluster", str(profile),
                           "--runs", str(runs), *extra], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def status(env, study_file, runs) -> dict[str, dict]:
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cccad"), "status", str(study_file), "--runs", str(runs)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    cols = lines[0].split()
    return {row[1]: dict(zip(cols, row)) for row in (line.split(None, len(cols) - 1) for line in lines[1:-1])}


def wait_idle(env, timeout=900):
    """Until SLURM has no job left in its queue."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            return
        time.sleep(2)
    raise AssertionError("jobs still queued after the timeout")


def task_ids(text: str) -> list[int]:
    """scontrol's ArrayTaskId: "3", or "0-1%2" for tasks not yet started (throttle after %)."""
    first, _, last = text.split("%")[0].partition("-")
    return list(range(int(first), int(last or first) + 1))


def scontrol_jobs(env, job_id) -> list[dict]:
    """What the controller holds of job_id, or of every job it holds when job_id is empty."""
    out = subprocess.run(["scontrol", "-o", "show", "job", *([job_id] if job_id else [])], env=env, capture_output=True,
                         text=True).stdout
    return [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in out.splitlines()]


@pytest.mark.slurm
def test_study_on_slurm_failed_seed_isolated_and_resubmission_idempotent(cluster, tmp_path):
    env, runs = cluster, tmp_path / "runs"
    # two of the four variants (one plain, one waiting for pretrain_encoder): the same graph, less time
    study_file = study(tmp_path, variants={v: FULL_VARIANTS[v] for v in TWO})
    graph = {name: needs for name, needs in GRAPH.items() if not any(v in name for v in set(VARIANTS) - set(TWO))}
    # seed 1's pretraining finds another config's checkpoint in its run folder and fails
    corrupt = runs / "tiny" / "pretrain-encoder-darkroom-seed1" / "checkpoints" / "step-00000010.pt"
    corrupt.parent.mkdir(parents=True)
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "scheduler_state_dict": {}, "global_step": 10,
                "rng": {}, "config_hash": "another config"}, corrupt)
    submit(env, study_file, runs)
    (record_file,) = (runs / "tiny" / ".submit").glob("*.json")
    record = json.loads(record_file.read_text())
    ids = {a["name"]: a["job_id"] for a in record["arrays"]}
    assert sorted(ids) == sorted(graph) and len(set(ids.values())) == 8
    for name, job_id in ids.items():  # what SLURM itself holds, read before the first array ends
        tasks = scontrol_jobs(env, job_id)
        assert sorted(i for t in tasks for i in task_ids(t["ArrayTaskId"])) == [0, 1], (name, tasks)
        assert all(t["JobName"] == f"tiny:{name}" for t in tasks)
        assert {t["Nice"] for t in tasks} == {str(NICE[name.split("-")[0]])}, (name, tasks)
        deps = {t.get("Dependency", "(null)") for t in tasks}
        if graph[name]:
            wanted = ",".join(f"aftercorr:{ids[n]}_*(unfulfilled)" for n in graph[name])
            assert deps == {wanted}, (name, deps, wanted)
        else:  # the held gate job, cancelled once all was in: its dependency is met or already gone
            assert all(re.fullmatch(r"afterany:\d+\((unfulfilled|fulfilled)\)|\(null\)", d) for d in deps), (name, deps)
    # SLURM ranks a seed's evaluation above the trainings, and those above collection, though submitted later
    rank = {name: int(scontrol_jobs(env, job_id)[0]["Priority"]) for name, job_id in ids.items()}
    assert rank["evaluate-AD"] > rank["train-CompressedAD-finetuned"] > rank["pretrain_encoder"] > rank["collect"], rank
    (gate,) = [job for job in scontrol_jobs(env, "") if job["JobName"] == "tiny:gate"]
    assert gate["JobState"] == "CANCELLED" and gate["RunTime"] == "00:00:00", gate  # it never ran
    (report_job,) = scontrol_jobs(env, record["report_job"])  # the report waits for every array, however it ends
    assert sorted(re.findall(r"afterany:(\d+)_\*", report_job["Dependency"])) == sorted(ids.values()), report_job
    wait_idle(env)
    rows = status(env, study_file, runs)
    needs_pretrain = {"CompressedAD-finetuned"}
    for name, row in rows.items():
        if name.endswith("seed0") or not (name.startswith("pretrain") or any(v in name for v in needs_pretrain)):
            assert row["state"] == "done", row
    assert rows["pretrain-encoder-darkroom-seed1"]["state"] == "failed"
    assert "pretrain-encoder-darkroom-seed1/log.txt" in rows["pretrain-encoder-darkroom-seed1"]["logs"]
    assert "written by a different config" in (runs / "tiny" / "pretrain-encoder-darkroom-seed1" / "log.txt").read_text()
    assert rows["pretrain-encoder-darkroom-seed1"]["ended"] == "exit:2"  # as its SLURM job recorded in its log
    blocked = [n for n, r in rows.items() if r["state"] == "blocked"]
    assert sorted(blocked) == sorted(f"{s}-{v}-darkroom-seed1" for s in ("train", "evaluate", "probe") for v in needs_pretrain)
    report = (runs / "tiny" / "report" / "report.md").read_text()  # written by the study's last job
    assert "- `pretrain-encoder-darkroom-seed1`: incomplete: started and did not finish" in report
    assert "- `train-CompressedAD-finetuned-darkroom-seed1`: blocked: needs pretrain-encoder-darkroom-seed1" in report
    assert "| darkroom | AD | 2/2 |" in report and "| darkroom | CompressedAD-finetuned | 1/2 |" in report

    corrupt.unlink()  # the fault fixed: resubmitting runs seed 1's missing chain only
    out = submit(env, study_file, runs)
    assert "16 tasks, 4 to submit in 4 arrays" in out, out
    wait_idle(env)
    assert {r["state"] for r in status(env, study_file, runs).values()} == {"done"}
    assert "16 of 16 runs complete." in (runs / "tiny" / "report" / "report.md").read_text()
    out = submit(env, study_file, runs)
    assert "0 to submit" in out and "nothing to submit" in out
    assert len(list((runs / "tiny" / ".submit").glob("*.json"))) == 2


@pytest.mark.slurm
def test_requeued_training_task_resumes_to_the_uninterrupted_result(cluster, tmp_path):
    env = cluster
    sections = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                          "variants": {"AD": {}}},
                "train": {**TINY["train"], "steps": 400, "checkpoint_every": 40, "log_every": 20, "val_every": 100}}
    study_file = write_yaml(tmp_path / "study.yaml", {**TINY, **sections})
    cccad("local", study_file, "--runs", tmp_path / "plain")
    submit(env, study_file, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "tiny" / "train-AD-darkroom-seed0"
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*.pt")):
        time.sleep(0.1)
    record = json.loads(next((tmp_path / "runs" / "tiny" / ".submit").glob("*.json")).read_text())
    job = next(a["tasks"]["train-AD-darkroom-seed0"] for a in record["arrays"] if a["name"] == "train-AD")
    requeue = subprocess.run(["scontrol", "requeue", job], env=env, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr + subprocess.run(["squeue"], env=env, capture_output=True, text=True).stdout
    wait_idle(env)
    rows = status(env, study_file, tmp_path / "runs")
    assert rows["train-AD-darkroom-seed0"]["state"] == "done" and rows["train-AD-darkroom-seed0"]["requeues"] == "1", rows
    requeued = json.loads((run_dir / "metrics.json").read_text())
    plain = json.loads((tmp_path / "plain" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())
    assert 0 < requeued["resumed_from"] < 400
    assert len(requeued["history"]) == len(plain["history"])
    for a, b in zip(requeued["history"], plain["history"]):
        a.pop("samples_per_s"), b.pop("samples_per_s")
        assert a == pytest.approx(b, rel=1e-6), (a, b)
    assert requeued["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-6)


@pytest.mark.slurm
def test_zero2_training_task_runs_as_two_slurm_tasks_matching_one_process(cluster, tmp_path, deepspeed_ops):
    env = cluster
    sections = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                          "variants": {"AD": {}}}, "train": {**TINY["train"], "strategy": "zero2"}}
    study_file = write_yaml(tmp_path / "study.yaml", {**TINY, **sections})
    profile = write_yaml(tmp_path / "two.yaml", {"extends": str(LOCAL), "stages": {"train": {"processes": 2}}})
    cccad("local", study_file, "--runs", tmp_path / "one", "train.strategy=ddp")  # one process
    submit(env, study_file, tmp_path / "runs", profile=profile)
    wait_idle(env)
    assert status(env, study_file, tmp_path / "runs")["train-AD-darkroom-seed0"]["state"] == "done"
    record = json.loads(next((tmp_path / "runs" / "tiny" / ".submit").glob("*.json")).read_text())
    job = next(a["tasks"]["train-AD-darkroom-seed0"] for a in record["arrays"] if a["name"] == "train-AD")
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job, "--format=JobID,NTasks,State"], env=env,
                           capture_output=True, text=True).stdout.split()
    assert f"{job}.0|2|COMPLETED" in steps, steps  # the job step ran as 2 SLURM tasks
    run_dir = tmp_path / "runs" / "tiny" / "train-AD-darkroom-seed0"
    assert "train: done" in (run_dir / "log.txt").read_text() and (run_dir / "log.rank1.txt").is_file()
    two = json.loads((run_dir / "metrics.json").read_text())["history"]
    one = json.loads((tmp_path / "one" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())["history"]
    assert [r["step"] for r in two] == [r["step"] for r in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)


@pytest.mark.slurm
def test_task_past_its_time_limit_is_requeued_and_finishes(cluster, tmp_path):
    """A 2-minute limit, USR2 60 s before it: the training loop saves a checkpoint on USR2,
    submitit requeues the task, the rerun resumes (and is signalled 60 s after its own start).
    Sized from the training speed measured in a job just before to need about 90 s of training,
    more than one run gives (60 s less its start-up), so at least one requeue."""
    env = cluster
    sections = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                          "variants": {"AD": {}}}}
    probe = write_yaml(tmp_path / "probe.yaml", {**TINY, **sections, "train": {**TINY["train"], "steps": 400}})
    submit(env, probe, tmp_path / "speed")  # the training speed in a job, as the test's job will see it
    wait_idle(env)
    rate = json.loads((tmp_path / "speed" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())["samples_per_s"]
    steps = max(100, int(90 * rate / TINY["train"]["batch_size"]) // 20 * 20)
    sections["train"] = {**TINY["train"], "steps": steps, "checkpoint_every": 1000, "log_every": 20, "val_every": steps}
    study_file = write_yaml(tmp_path / "study.yaml", {**TINY, **sections})
    profile = write_yaml(tmp_path / "short.yaml", {"extends": str(LOCAL), "max_requeues": 15, "signal_delay_s": 60,
                                                   "stages": {"train": {"time_min": 2}}})
    submit(env, study_file, tmp_path / "runs", profile=profile)
    wait_idle(env, timeout=900)
    row = status(env, study_file, tmp_path / "runs")["train-AD-darkroom-seed0"]
    assert row["state"] == "done" and int(row["requeues"]) >= 1, row
    log = (tmp_path / "runs" / "tiny" / "train-AD-darkroom-seed0" / "log.txt").read_text()
    assert "cccad: interrupted: SIGUSR2 at step" in log and "resumed from" in log, log[-2000:]
    history = json.loads((tmp_path / "runs" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())["history"]
    assert [r["step"] for r in history] == [1] + list(range(20, steps + 1, 20))


def refused(env, *args) -> str:
    """`cccad submit ...` that must be refused: exit 2, one line, nothing recorded or left behind."""
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "cccad"), "submit", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.slurm
@pytest.mark.faults
def test_slurm_refusals_are_one_line_and_leave_nothing_submitted(cluster, tmp_path):
    env, runs = cluster, tmp_path / "runs"
    study_file = study(tmp_path, seeds=(0,), variants={"AD": {}})
    nowhere = write_yaml(tmp_path / "nowhere.yaml", {"extends": str(LOCAL), "partition": "nowhere"})
    for dry in (["--dry-run"], []):  # the cluster is asked (sinfo) before anything is submitted
        err = refused(env, study_file, "--cluster", nowhere, "--runs", runs, *dry)
        assert f"{nowhere}: partition: 'nowhere' is not a partition of this cluster (sinfo lists: local)" in err, err
    # the controller down, and no SLURM configuration at all: SLURM's own words, one line
    conf = (tmp_path / "down.conf")
    conf.write_text(re.sub(r"(?m)^SlurmctldPort=\d+", "SlurmctldPort=27899", Path(env["SLURM_CONF"]).read_text()))
    err = refused(dict(env, SLURM_CONF=str(conf)), study_file, "--cluster", LOCAL, "--runs", runs)
    assert "cccad: error: sinfo: " in err and "Unable to contact slurm controller" in err, err
    err = refused(dict(env, SLURM_CONF=str(tmp_path / "no.conf")), study_file, "--cluster", LOCAL, "--runs", runs)
    assert "cccad: error: sinfo: " in err, err
    dry = subprocess.run([str(ROOT / ".venv" / "bin" / "cccad"), "submit", str(study_file), "--cluster", str(LOCAL),
                          "--runs", str(runs), "--dry-run"], env=dict(env, SLURM_CONF=str(conf)), capture_output=True,
                         text=True, timeout=300)
    assert dry.returncode == 0 and "(partition not checked: sinfo: " in dry.stdout, dry.stdout + dry.stderr
    # sbatch refuses an array after others went in: they are cancelled, submitit's files removed
    greedy = write_yaml(tmp_path / "greedy.yaml", {"extends": str(LOCAL), "stages": {"evaluate": {"mem_gb": 100000}}})
    err = refused(env, study_file, "--cluster", greedy, "--runs", runs)
    assert re.search(r"sbatch refused the evaluate-AD job: .*; cancelled the \d+ arrays submitted before it; nothing "
                     r"was submitted", err), err
    assert not (runs / "tiny" / ".submit").exists() and not list((runs / "tiny" / ".slurm").iterdir())
    queue = subprocess.run(["squeue", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.split()
    assert set(queue) <= {"CANCELLED", "COMPLETING"}, queue
