"""Containers: a cluster profile's stages run inside an image (apptainer on clusters, podman on
the local cluster), and the image's own code keeps its outputs on the host.

A SLURM job stays on the host (submitit, its requeue through `scontrol`, SLURM's signals all
need the host); only the stage it starts, `cccad run`, runs in the image, so the code that
computes and writes the run's files is the image's: its manifest records the image and the
image's build (commit included). The runs folder is bound at the same path, so the task's config
and input paths mean the same inside; signals reach the stage through the runtime (`podman kill`
to the image's init, tini; apptainer's own forwarding) and it checkpoints as outside.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cccad.config import ConfigError
from cccad.runinfo import IMAGE_BUILD, image_build

# what a stage needs of its job's environment (beside the profile's env): SLURM's variables
# (the manifest's job id), torch.distributed's rendezvous, threads and GPUs
PASSED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
          "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
PASSED_PREFIXES = ("SLURM_",)


@dataclass(frozen=True)
class Container:
    runtime: str  # apptainer or podman (Profile.container_runtime)
    image: str  # apptainer: a SIF file; podman: an image in the node's local storage

    def problem(self) -> str | None:
        """Why jobs could not start this image (checked when submitting), or None. A SIF is a file
        on the filesystem the nodes share; a podman image is in the (local) nodes' storage."""
        if self.runtime == "apptainer":
            return None if Path(self.image).is_file() else f"{self.image}: no such image file"
        if shutil.which("podman") is None:
            return "podman is not installed here"
        if subprocess.run(["podman", "image", "exists", self.image], capture_output=True, timeout=60).returncode:
            return f"{self.image}: no such image in podman's storage (make image IMAGE={self.image})"
        return None

    def wrap(self, argv: list[str], runs_root: Path, ident: str, names=()) -> tuple[list[str], dict]:
        """`argv` (`<python> -m cccad ...`, as study.task_command makes it, with absolute paths
        under `runs_root`) as a command that runs it in the image, and that command's environment.
        `ident` names the process (its run folder and rank); `names`: further variables to pass in."""
        assert argv[1:3] == ["-m", "cccad"], argv
        root = str(Path(runs_root).resolve())
        env = dict(os.environ, CCCAD_IMAGE=self.image)
        passed = sorted({"CCCAD_IMAGE", *names, *(n for n in env if n in PASSED or n.startswith(PASSED_PREFIXES))})
        passed = [n for n in passed if n in env]
        if self.runtime == "apptainer":
            # --cleanenv: nothing of the host's Python setup (PYTHONPATH, a venv's PATH) leaks in;
            # APPTAINERENV_ passes values as they are (--env would split them at commas)
            env.update({f"APPTAINERENV_{n}": env[n] for n in passed})
            return ["apptainer", "exec", "--nv", "--cleanenv", "--bind", root, self.image, "cccad", *argv[3:]], env
        # podman: the image's entry point is `tini -- cccad`; --env NAME takes the value from env.
        # --replace: a rerun removes a container its killed predecessor left running (podman's
        # client can die without its container)
        return ["podman", "run", "--rm", "--replace", "--name", self.name(ident), "--network=host", "--ipc=host",
                "--volume", f"{root}:{root}", *(f"--env={n}" for n in passed), self.image, *argv[3:]], env

    @staticmethod
    def name(ident: str) -> str:
        """A podman container's name: fixed per run folder and rank."""
        return f"cccad-{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(ident).name)[:40]}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"

    def signal(self, client: subprocess.Popen, ident: str, signum: int) -> None:
        """Signal the stage that `client` (wrap's command) runs. apptainer passes signals on;
        podman's client does too, but through a `runc kill` that SLURM's own signals can kill on the
        way (seen: a requeue's SIGCONT and SIGTERM, the container never signalled), so podman is
        asked directly."""
        if self.runtime == "podman":
            subprocess.run(["podman", "kill", "--signal", str(int(signum)), self.name(ident)], capture_output=True, timeout=60)
        else:
            client.send_signal(signum)


# ----------------------------------------------------------------------------- inside the image

def in_image() -> bool:
    """Whether this is an image's copy of cccad (its build wrote IMAGE_BUILD.json beside it)."""
    return image_build() is not None


def check_args(args) -> None:
    """`cccad run/local/report` as the image's code: their outputs' folder checked (else nothing)."""
    if not in_image() or args.command not in ("run", "local", "report"):
        return
    if args.command == "run":  # the run folder may be new; the folder it goes in must be bound
        check_outputs(Path(args.out).parent if args.out else Path("runs"), "--out")
    else:
        check_outputs(Path(args.runs), "--runs")


def check_outputs(folder: Path, what: str) -> None:
    """Inside the image, a run's outputs must go to a folder bound from the host: a missing,
    read-only or unbound one is refused before any work (else the runs are lost with the
    container, or the stage fails at its first write)."""
    folder = Path(folder)
    bind = (f"bind a host folder there (podman run -v HOST:{folder.absolute()}, "
            f"apptainer exec --bind HOST:{folder.absolute()})")
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder}: no such folder in the container; {bind}")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} {folder}: read-only in the container; {bind}")
    if os.stat(folder).st_dev == os.stat(IMAGE_BUILD.parent).st_dev:
        raise ConfigError(f"{what} {folder}: in the container's own filesystem, so the runs would be lost "
                          f"with the container; {bind}")
