"""The container image, built and run for real: podman (containers/setup.sh) builds the Dockerfile
on a Debian 12 base made with mmdebstrap, once per test run, and the tests run cccad inside it:
its own code and locked packages, runs only to a folder bound from the host, a training stage
stopped by `podman stop` that resumes to the result outside the image, and a study submitted to
a local SLURM cluster whose stages run in the image. (apptainer: `make sif sif-smoke`, README.)"""
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from conftest import ROOT, TINY, cccad, start_cluster, stop_cluster, write_yaml
from cccad.container import Container

IMAGE = "localhost/cccad:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
VARIANTS = yaml.safe_load((ROOT / "configs" / "studies" / "full.yaml").read_text())["study"]["variants"]


def pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a requirements file's `name==version` lines."""
    found = re.findall(r"(?m)^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\;]+)", path.read_text())
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


# ----------------------------------------------------------------------------- recipes and profiles

def test_make_install_keeps_its_own_exact_pins():
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.+\-]*", p) for p in lines), \
        [p for p in lines if "==" not in p]
    assert "pip install --quiet -r requirements.txt" in (ROOT / "Makefile").read_text()


def test_lock_holds_the_pins_of_make_install_and_the_cuda_closure_hashed():
    lock, local = pins(ROOT / "requirements-image.txt"), pins(ROOT / "requirements.txt")
    assert {name: lock.get(name) for name in local} == local  # the same versions as make install
    assert lock["torch"] == "2.13.0" and lock["triton"] and lock["nvidia-cuda-runtime"].startswith("13.0")
    assert len([n for n in lock if n.startswith(("nvidia-", "cuda-"))]) >= 15, sorted(lock)
    text = (ROOT / "requirements-image.txt").read_text()
    entries = re.split(r"(?m)^(?=[A-Za-z])", re.sub(r"(?m)^#.*\n", "", text))
    assert all("--hash=sha256:" in e for e in entries if e.strip()), [e for e in entries if "--hash" not in e]
    build = pins(ROOT / "requirements-image-build.txt")
    assert set(build) == {"pip", "setuptools"} and lock["setuptools"] == build["setuptools"]
    docker = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps -r requirements-image-build.txt" in docker
    assert "pip install --require-hashes --no-deps --no-build-isolation -r requirements-image.txt" in docker
    # apt and pip first, the project and its build metadata last: a new commit rebuilds only those
    order = [docker.index(s) for s in ("apt-get install", "requirements-image.txt ./", "COPY cccad", "ARG GIT_COMMIT")]
    assert order == sorted(order)


def test_container_runtime_and_image_are_checked_when_submitting(tmp_path):
    study = write_yaml(tmp_path / "study.yaml", TINY)
    for profile, message in [({"container_image": "x", "container_runtime": "docker"},
                              "container_runtime: 'docker' is not one of: apptainer, podman"),
                             ({"container_image": str(tmp_path / "none.sif")},
                              f"container_image: {tmp_path / 'none.sif'}: no such image file")]:
        path = write_yaml(tmp_path / "profile.yaml", profile)
        proc = cccad("submit", study, "--cluster", path, "--runs", tmp_path / "runs", check=False)
        assert proc.returncode == 2 and proc.stderr == f"cccad: error: {path}: {message}\n", proc.stderr
        assert not (tmp_path / "runs").exists()


def test_stage_commands_in_each_runtime_bind_the_runs_and_pass_the_job_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1,2]")  # a comma: apptainer's --env would split it
    monkeypatch.setenv("PYTHONPATH", "/home/me/checkout")
    argv = ["/usr/bin/python3", "-m", "cccad", "run", "train", "-c", f"{tmp_path}/c.yaml", "--out", f"{tmp_path}/r"]
    cmd, env = Container("apptainer", "/shared/cccad.sif").wrap(argv, tmp_path, f"{tmp_path}/r:0", ["GLOO_SOCKET_IFNAME"])
    assert cmd == ["apptainer", "exec", "--nv", "--cleanenv", "--bind", str(tmp_path), "/shared/cccad.sif", "cccad", *argv[3:]]
    assert env["APPTAINERENV_SLURM_JOB_NODELIST"] == "node[1,2]" and env["APPTAINERENV_CCCAD_IMAGE"] == "/shared/cccad.sif"
    assert "APPTAINERENV_PYTHONPATH" not in env
    cmd, env = Container("podman", IMAGE).wrap(argv, tmp_path, f"{tmp_path}/r:0")
    assert cmd[:3] == ["podman", "run", "--rm"] and cmd[-len(argv) + 2:] == [IMAGE, *argv[3:]]
    assert f"{tmp_path}:{tmp_path}" in cmd and "--env=SLURM_JOB_NODELIST" in cmd and "--env=PYTHONPATH" not in cmd
    assert cmd[cmd.index("--name") + 1] == Container.name(f"{tmp_path}/r:0") != Container.name(f"{tmp_path}/r:1")


# ----------------------------------------------------------------------------- in the image

@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> dict:
    """podman set up (containers/setup.sh) and IMAGE built from this checkout by `make image` (the
    first build takes minutes, a rebuild with nothing changed seconds: podman's layer cache), under
    a lock shared by the test workers: the environment for podman. The build trusts the host's CA
    bundle (this machine's network, given here, not in the recipe)."""
    with FileLock(tmp_path_factory.getbasetemp().parent / "image.lock"):
        setup = subprocess.run(["bash", ROOT / "containers" / "setup.sh"], capture_output=True, text=True, timeout=1200)
        assert setup.returncode == 0, setup.stderr
        env = dict(os.environ, **dict(kv.split("=", 1) for kv in setup.stdout.strip().splitlines()[-1].split()[1:]))
        pip_conf = tmp_path_factory.mktemp("build") / "pip.conf"
        pip_conf.write_text("[global]\ncert = /etc/host-ca.crt\n")
        flags = f"-v {HOST_CA}:/etc/host-ca.crt:ro -v {pip_conf}:/etc/pip.conf:ro" if HOST_CA.is_file() else ""
        build = subprocess.run(["make", "-C", ROOT, "image", f"IMAGE={IMAGE}", "BASE_IMAGE=localhost/debian:bookworm",
                                f"BUILD_FLAGS={flags}"], env=env, capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return env


def run(env, *args, volumes=(), check=True, timeout=900, name=None) -> subprocess.CompletedProcess:
    """`podman run IMAGE args...` (the image's entry point is `tini -- cccad`)."""
    cmd = ["podman", "run", "--rm", "-e", "OMP_NUM_THREADS=1", "-e", f"CCCAD_IMAGE={IMAGE}"]
    cmd += [a for v in volumes for a in ("-v", v)] + (["--name", name] if name else [])
    proc = subprocess.run([*cmd, IMAGE, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def image_build(env) -> dict:
    return json.loads(subprocess.run(["podman", "run", "--rm", "--entrypoint", "cat", IMAGE, "/opt/cccad/IMAGE_BUILD.json"],
                                     env=env, capture_output=True, text=True, check=True).stdout)


def head() -> str:
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.container
def test_image_runs_cccad_with_the_locked_packages_and_records_its_build(podman):
    assert run(podman, "--help").stdout.startswith("usage: cccad")
    build = image_build(podman)
    assert build["git_commit"] == head() and build["base_image"] == "localhost/debian:bookworm"
    freeze = subprocess.run(["podman", "run", "--rm", "--entrypoint", "pip", IMAGE, "list", "--format", "json"],
                            env=podman, capture_output=True, text=True, check=True).stdout
    installed = {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(freeze)}
    assert installed.pop("cccad") == "0.1.0"  # the project itself, beside exactly the locked closure
    assert installed == {**pins(ROOT / "requirements-image.txt"), **pins(ROOT / "requirements-image-build.txt")}
    python = subprocess.run(["podman", "run", "--rm", "--entrypoint", "python", IMAGE, "-c",
                             "import sys, torch; print(sys.version.split()[0], torch.__version__)"],
                            env=podman, capture_output=True, text=True, check=True).stdout.split()
    assert python[0].startswith("3.11.") and python[1] == "2.13.0+cu130"


@pytest.mark.container
def test_image_imports_its_own_cccad_whatever_the_working_directory(podman, tmp_path):
    (tmp_path / "cccad").mkdir()  # a checkout's package where `python -m cccad` would look first
    (tmp_path / "cccad" / "__init__.py").write_text("")
    (tmp_path / "cccad" / "__main__.py").write_text("print('the checkout ran')")
    proc = subprocess.run(["podman", "run", "--rm", "-v", f"{tmp_path}:{tmp_path}", "-w", tmp_path, "--entrypoint",
                           "python", IMAGE, "-m", "cccad", "--help"], env=podman, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: cccad"), proc.stdout + proc.stderr


@pytest.mark.container
def test_runs_folder_not_bound_from_the_host_is_refused_in_one_line(podman, tmp_path):
    study = "/opt/cccad/configs/studies/smoke.yaml"
    (tmp_path / "ro").mkdir()
    for volumes, runs, why in [((), "/runs", "no such folder in the container"),
                               ((f"{tmp_path / 'ro'}:/runs:ro",), "/runs", "read-only in the container"),
                               ((), "/tmp", "in the container's own filesystem"),
                               ((), "runs", "no such folder in the container")]:
        proc = run(podman, "local", study, "--runs", runs, volumes=volumes, check=False)
        assert proc.returncode == 2 and proc.stdout == "", (runs, proc.stdout, proc.stderr)
        assert re.fullmatch(rf"cccad: error: --runs {runs}: {why}.*bind a host folder there .*\n", proc.stderr), proc.stderr
    proc = run(podman, "run", "train", "-c", "/opt/cccad/configs/studies/smoke.yaml", "--out", "/out/train", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("cccad: error: --out /out: no such folder"), proc.stderr
    assert not list((tmp_path / "ro").iterdir())


@pytest.mark.container
def test_darkroom_study_inside_the_image_with_runs_bound(podman, tmp_path):
    """The TINY Darkroom graph (every stage, two variants) by the image's `cccad local`."""
    (tmp_path / "runs").mkdir()
    study = write_yaml(tmp_path / "cad.yaml", {**TINY, "extends": "/opt/cccad/configs/studies/smoke.yaml",
                                               "study": {"name": "cad", "envs": ["darkroom"], "seeds": [0],
                                                         "variants": {v: VARIANTS[v] for v in ("AD", "CompressedAD-finetuned")}}})
    proc = run(podman, "local", study, "--runs", tmp_path / "runs", volumes=[f"{tmp_path}:{tmp_path}"])
    assert "study cad: 8/8 tasks complete" in proc.stdout, proc.stdout
    build = image_build(podman)
    for manifest in (tmp_path / "runs" / "cad").glob("*/manifest.json"):
        m = json.loads(manifest.read_text())
        assert m["image_build"] == build and m["code"]["commit"] == build["git_commit"] and m["container_image"] == IMAGE


@pytest.mark.container
def test_training_stopped_by_podman_stop_resumes_to_the_result_outside_the_image(podman, tmp_path):
    # 800 steps: some seconds left after the first checkpoint for `podman stop` to arrive
    sections = {"study": {"name": "stop", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train"],
                          "variants": {"AD": {}}},
                "train": {**TINY["train"], "steps": 800, "checkpoint_every": 40, "log_every": 20, "val_every": 200}}
    outside = write_yaml(tmp_path / "outside.yaml", {**TINY, **sections})
    inside = write_yaml(tmp_path / "inside.yaml", {**TINY, **sections, "extends": "/opt/cccad/configs/studies/smoke.yaml"})
    cccad("local", outside, "--runs", tmp_path / "outside")  # the host's venv: CPU build of torch
    (tmp_path / "runs").mkdir()
    run_dir = tmp_path / "runs" / "stop" / "train-AD-darkroom-seed0"
    name = f"cccad-test-stop-{os.getpid()}"
    cmd = ["podman", "run", "--rm", "--name", name, "-e", "OMP_NUM_THREADS=1", "-v", f"{tmp_path}:{tmp_path}", IMAGE,
           "local", inside, "--runs", tmp_path / "runs"]
    first = subprocess.Popen(list(map(str, cmd)), env=podman, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*.pt")):
        time.sleep(0.1)
    stop = subprocess.run(["podman", "stop", "--time", "30", name], env=podman, capture_output=True, text=True, timeout=120)
    out = first.communicate(timeout=120)[0]
    assert stop.returncode == 0 and first.returncode == 75, (first.returncode, out)  # EXIT_INTERRUPTED
    assert "cccad: interrupted: train-AD-darkroom-seed0 stopped by SIGTERM (exit code 75)" in out, out
    assert "cccad: interrupted: SIGTERM at step" in (run_dir / "log.txt").read_text()
    assert not (run_dir / "metrics.json").exists()
    subprocess.run(list(map(str, cmd)), env=podman, capture_output=True, text=True, timeout=600, check=True)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    plain = json.loads((tmp_path / "outside" / "stop" / "train-AD-darkroom-seed0" / "metrics.json").read_text())
    assert 0 < resumed["resumed_from"] < 800
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in plain["history"]]
    for a, b in zip(resumed["history"], plain["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (a, b)
    assert resumed["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)


# ----------------------------------------------------------------------------- on SLURM

@pytest.mark.container
@pytest.mark.slurm
def test_study_submitted_with_a_podman_profile_runs_its_stages_in_the_image_and_requeue_resumes(podman, tmp_path):
    sections = {"study": {"name": "tiny", "envs": ["darkroom"], "seeds": [0], "stages": ["collect", "train", "evaluate"],
                          "variants": {"AD": {}}},
                "train": {**TINY["train"], "steps": 400, "checkpoint_every": 40, "log_every": 20, "val_every": 100}}
    study = write_yaml(tmp_path / "study.yaml", {**TINY, **sections})
    cccad("local", study, "--runs", tmp_path / "plain")  # outside the image
    profile = write_yaml(tmp_path / "podman.yaml", {"extends": str(ROOT / "slurm" / "profiles" / "local.yaml"),
                                                    "container_image": IMAGE, "container_runtime": "podman"})
    env = start_cluster(tmp_path / "slurm", 25817)  # its jobs see podman's settings through submit's environment
    env.update({k: podman[k] for k in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")})
    try:
        runs = tmp_path / "runs"
        sub = subprocess.run([ROOT / ".venv" / "bin" / "cccad", "submit", study, "--cluster", profile, "--runs", runs],
                             env=env, capture_output=True, text=True, timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        run_dir = runs / "tiny" / "train-AD-darkroom-seed0"
        deadline = time.time() + 300
        while time.time() < deadline and not list((run_dir / "checkpoints").glob("step-*.pt")):
            time.sleep(0.1)
        record = json.loads(next((runs / "tiny" / ".submit").glob("*.json")).read_text())
        job = next(a["tasks"]["train-AD-darkroom-seed0"] for a in record["arrays"] if a["name"] == "train-AD")
        requeue = subprocess.run(["scontrol", "requeue", job], env=env, capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        deadline = time.time() + 900
        while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
            assert time.time() < deadline, "jobs still queued"
            time.sleep(2)
        status = subprocess.run([ROOT / ".venv" / "bin" / "cccad", "status", study, "--runs", runs], env=env,
                                capture_output=True, text=True, timeout=120).stdout
        assert status.strip().splitlines()[-1] == "3 done", status
        assert re.search(r"train-AD-darkroom-seed0\s+done\s+\S+\s+1\b", status), status
    finally:
        stop_cluster(env)
    build = image_build(podman)
    for task in ("collect-darkroom-seed0", "train-AD-darkroom-seed0", "evaluate-AD-darkroom-seed0"):
        m = json.loads((runs / "tiny" / task / "manifest.json").read_text())
        assert m["container_image"] == IMAGE and m["image_build"] == build, task
        assert m["code"]["commit"] == build["git_commit"] and m["slurm_job_id"], task
        assert m["packages"]["torch"] == "2.13.0"
    log = (run_dir / "log.txt").read_text()
    assert "cccad: interrupted: SIGTERM at step" in log and "resumed from" in log, log[-2000:]
    left = subprocess.run(["podman", "ps", "-a", "-q", "--filter", "name=^cccad-"], env=podman, capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # no container outlived its job
    requeued = json.loads((run_dir / "metrics.json").read_text())
    plain = json.loads((tmp_path / "plain" / "tiny" / "train-AD-darkroom-seed0" / "metrics.json").read_text())
    assert 0 < requeued["resumed_from"] < 400
    for a, b in zip(requeued["history"], plain["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (a, b)
