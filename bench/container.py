"""The container image (podman, containers/setup.sh): its build from scratch (base image made,
every package downloaded), the rebuild after a code change (only the project layers), its size;
the start-up overhead of a task in the image (`podman run`) against the same started outside it;
and the smoke study's wall time in the image against outside it, same run. The build trusts the
host's CA bundle (this machine's network, as in the tests)."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import ROOT, Row, report

IMAGE = "localhost/cccad:bench"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
REPEATS = 5


def timed(cmd, env, **kw) -> float:
    t = time.perf_counter()
    subprocess.run(list(map(str, cmd)), env=env, check=True, capture_output=True, **kw)
    return time.perf_counter() - t


def main():
    setup = subprocess.run(["bash", ROOT / "containers" / "setup.sh"], capture_output=True, text=True, check=True)
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in setup.stdout.strip().splitlines()[-1].split()[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "pip.conf").write_text("[global]\ncert = /etc/host-ca.crt\n")
        flags = f"-v {HOST_CA}:/etc/host-ca.crt:ro -v {tmp / 'pip.conf'}:/etc/pip.conf:ro" if HOST_CA.is_file() else ""
        make = ["make", "-C", ROOT, "image", f"IMAGE={IMAGE}", "BASE_IMAGE=localhost/debian:bookworm"]
        build = timed([*make, f"BUILD_FLAGS={flags} --no-cache"], env)
        # a new commit: the build context with one source file changed (a copy, not this checkout)
        context = tmp / "context"
        shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".git", ".venv", ".lock-venv", "runs", ".slurm-local", "bench"))
        with open(context / "cccad" / "fs.py", "a") as f:
            f.write("# a change\n")
        rebuild = timed(["podman", "build", *flags.split(), "--build-arg", "BASE_IMAGE=localhost/debian:bookworm",
                         "-t", f"{IMAGE}-changed", context], env)
        subprocess.run(["podman", "rmi", f"{IMAGE}-changed"], env=env, capture_output=True)
        size = int(subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE], env=env,
                                  capture_output=True, text=True, check=True).stdout) / 1e9

        # start-up: `cccad --help` (imports the CLI) in the image and outside, alternating
        inside, outside = [], []
        for _ in range(REPEATS):
            inside.append(timed(["podman", "run", "--rm", IMAGE, "--help"], env))
            outside.append(timed([ROOT / ".venv" / "bin" / "cccad", "--help"], env))
        inside_s, outside_s = statistics.median(inside), statistics.median(outside)

        # one thread a process on both sides, as `make test` does (2-thread processes on 2 shared
        # cores spend their time contending)
        (tmp / "in").mkdir()
        smoke_in = timed(["podman", "run", "--rm", "-e", "OMP_NUM_THREADS=1", "-v", f"{tmp}:{tmp}", IMAGE, "local",
                          "/opt/cccad/configs/studies/smoke.yaml", "--runs", tmp / "in"], env)
        smoke_out = timed([ROOT / ".venv" / "bin" / "cccad", "local", ROOT / "configs" / "studies" / "smoke.yaml",
                           "--runs", tmp / "out"], dict(env, OMP_NUM_THREADS="1"))
    print(f"start-up, s: in the image {inside} outside {outside}")
    rows = [Row("container image", "podman build from scratch, s (lock downloaded, about 2 GB)", build,
                "-", 0, "(figure)"),
            Row("container image", "rebuild after a source change, s", rebuild, "build from scratch, s", build,
                "only the project layers rebuilt"),
            Row("container image", "image size, GB", size, "-", 0, "(figure)"),
            Row("container start-up", f"`cccad --help` in the image (podman run), s, median of {REPEATS}", inside_s,
                "the same outside the image, s", outside_s, "(measure)"),
            Row("container smoke study", "configs/studies/smoke.yaml wall time in the image, s (1 thread)", smoke_in,
                "outside the image, s", smoke_out, "ratio near 1")]
    report(rows, "container")


if __name__ == "__main__":
    main()
