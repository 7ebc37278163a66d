"""A study on SLURM: cluster profiles, `cccad submit` and `cccad status`.

`submit` makes one job array per (stage, variant, env family) and chains them with `aftercorr`:
task i of an array starts when task i of each array it needs has succeeded. That is the study
graph exactly because every array of a family lists the same (env, seed) rows in the same order
(a per-variant stage gets one array per variant for this reason: one array over variants x rows
could not be matched task for task to its upstream array over rows). A failed task leaves its
dependants' dependency unsatisfiable, and SLURM cancels them (`--kill-on-invalid-dep`); the other
rows' chains go on.

Resubmitting is idempotent: rows whose tasks all exist and validate are not submitted, arrays
without work are skipped, and a task that finds its outputs complete exits at once. Each
submission is recorded in runs/<study>/.submit/<time>.json (arrays and each task's job id); `status`
reads those records, SLURM (`squeue`, `sacct`) and the run folders.

A task runs `cccad run` in a child process (as `cccad local` does), inside the profile's
container image if it names one (cccad/container.py). On SLURM's preemption or
time-limit signal (USR2, `signal_delay_s` before the limit) submitit calls `StageJob.checkpoint`:
the child, signalled too, saves a checkpoint at its step boundary and exits, and the task is
requeued with the same callable; the rerun resumes from that checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cccad.config import build, merge_into, read_with_sources
from cccad.container import Container
from cccad.fs import atomic_write_json, locked
from cccad.stages import STAGES
from cccad.runinfo import describe_exit, last_end, record_end
from cccad.study import Task, build_tasks, set_aside, task_command, task_log


class ClusterError(RuntimeError):
    """A submission that cannot go ahead; one line saying why."""


@dataclass
class Resources:
    """What one task of a stage asks SLURM for."""
    nodes: int = 1
    processes: int = 1  # SLURM tasks per node: one process per GPU (or per CPU share under gloo)
    # fewest nodes the job may start (or restart, after losing a node) on: SLURM --nodes=min-max
    # with nodes x processes tasks in all, packed onto the nodes it gets (so a ZeRO checkpoint,
    # split per process, still fits); None: exactly `nodes`
    min_nodes: int | None = None
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    mem_gb: float = 2.0  # per node
    time_min: int = 60

    def check(self, err):
        for key in ("nodes", "processes", "cpus_per_task", "time_min"):
            if getattr(self, key) < 1:
                err(key, "must be at least 1")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.nodes:
            err("min_nodes", f"must be between 1 and nodes ({self.nodes})")
        if self.gpus_per_task < 0:
            err("gpus_per_task", "must be 0 or more")
        if self.mem_gb <= 0:
            err("mem_gb", "must be positive")

    @property
    def flexible(self) -> bool:
        return self.min_nodes is not None and self.min_nodes < self.nodes

    def describe(self) -> str:
        gpus = f", {self.gpus_per_task} GPU" if self.gpus_per_task else ""
        layout = (f"{self.nodes * self.processes} proc on {self.min_nodes}-{self.nodes} nodes" if self.flexible
                  else f"{self.nodes}x{self.processes} proc")
        return f"{layout}, {self.cpus_per_task} CPU{gpus}, {self.mem_gb:g} GB, {self.time_min} min"


@dataclass
class Profile:
    """A cluster profile (slurm/profiles/*.yaml). `stages.<stage>` entries are merged onto
    `defaults`, so a stage names only what it changes."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 16  # %N: tasks of one array running at once
    max_requeues: int = 3  # time-outs a task may be requeued after (preemptions always requeue)
    signal_delay_s: int = 120  # USR2 this long before the time limit: time to save a checkpoint
    container_image: str | None = None  # run each task's stage inside this image (README, Containers)
    container_runtime: Literal["apptainer", "podman"] = "apptainer"  # apptainer: a SIF; podman: a local image
    env: dict[str, str] = field(default_factory=dict)  # set in every job, e.g. {GLOO_SOCKET_IFNAME: eth0}
    sbatch: dict[str, Any] = field(default_factory=dict)  # further sbatch options, e.g. {constraint: a100}
    # later stages first: each array's jobs are niced by how many stages may follow them, so a
    # seed's evaluation starts once its training ends, before other seeds' trainings; a study
    # stopped partway then has whole seeds. (A positive nice also yields a little to other users.)
    later_stages_first: bool = False
    defaults: Resources = field(default_factory=Resources)
    stages: dict[str, Resources] = field(default_factory=dict)

    def check(self, err):
        for name, res in self.stages.items():
            if name not in STAGES and name != "report":
                err(f"stages.{name}", f"unknown stage (known: {', '.join(STAGES)}, report)")
            elif name == "report" and res.nodes * res.processes > 1:
                err(f"stages.{name}.processes", "the report runs as one process on one node")
            elif res.nodes * res.processes > 1 and not STAGES[name].TRAINS:
                err(f"stages.{name}.processes", "this stage does not train: it runs as one process on one node")
        if self.defaults.nodes * self.defaults.processes > 1:
            err("defaults.processes", "must be 1 (stages that do not train run as one process); set processes per stage")
        if self.array_parallelism < 1:
            err("array_parallelism", "must be at least 1")
        if self.max_requeues < 0:
            err("max_requeues", "must be 0 or more")
        if self.signal_delay_s < 0:
            err("signal_delay_s", "must be 0 or more")
        for key, value in self.env.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                err(f"env.{key}", f"must be a string or a number, got {value!r}")
        for key, value in self.sbatch.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                err(f"sbatch.{key}", f"must be a string or a number, got {value!r}")
            if key in ("array", "dependency", "job-name", "output", "error") or (key == "nice" and self.later_stages_first):
                err(f"sbatch.{key}", "is set by cccad submit" + " (later_stages_first)" * (key == "nice"))

    def resources(self, stage: str) -> Resources:
        return self.stages.get(stage, self.defaults)

    def container(self) -> Container | None:
        return Container(self.container_runtime, self.container_image) if self.container_image else None


def load_profile(path: str | Path) -> Profile:
    tree, sources = read_with_sources(Path(path))
    defaults, stages = tree.get("defaults", {}), tree.get("stages", {})
    if isinstance(defaults, dict) and isinstance(stages, dict):
        tree["stages"] = {name: merge_into(copy.deepcopy(defaults), res) if isinstance(res, dict) else res
                          for name, res in stages.items()}
        for name, res in stages.items():  # a value a stage takes from defaults: the file set it there
            for key in defaults:
                if isinstance(res, dict) and key not in res and f"defaults.{key}" in sources:
                    sources.setdefault(f"stages.{name}.{key}", sources[f"defaults.{key}"])
    return build(tree, sources, Profile)


# ----------------------------------------------------------------------------- planning

@dataclass
class Array:
    name: str
    stage: str
    tasks: list[Task]  # in row order: (env, seed) rows of the family
    needs: list["Array"]  # arrays with the same rows: task i waits for their task i (aftercorr)
    waits: list["Array"]  # arrays with other rows (one run serving every seed): all of them (afterok)
    resources: Resources
    nice: int = 0  # sbatch --nice: later stages first (Profile.later_stages_first)

    def dependency(self, job_ids: dict[str, str] | None = None) -> str | None:
        """sbatch's --dependency (job ids of needed arrays as <name> until submitted)."""
        ids = lambda arrays: ":".join((job_ids or {}).get(a.name, f"<{a.name}>") for a in arrays)
        parts = [f"aftercorr:{ids(self.needs)}"] * bool(self.needs) + [f"afterok:{ids(self.waits)}"] * bool(self.waits)
        return ",".join(parts) or None

    def sbatch_options(self, profile: Profile, job_ids: dict[str, str] | None = None) -> list[str]:
        opts = [f"--array=0-{len(self.tasks) - 1}%{profile.array_parallelism}"]
        if dependency := self.dependency(job_ids):
            opts += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        return opts + [f"--nice={self.nice}"] * bool(self.nice)


NICE_STEP = 1000  # per stage: more than the FIFO priority between a study's first and last array


def plan(tasks: list[Task], profile: Profile) -> list[Array]:
    """The arrays to submit for the tasks not yet complete, in dependency order."""
    family = {t.name: t.config.env.family for t in tasks}
    todo = {(family[t.name], t.env, t.seed) for t in tasks if not t.complete()}
    groups: dict[tuple, list[Task]] = {}
    for t in tasks:
        if (family[t.name], t.env, t.seed) in todo:
            groups.setdefault((t.stage, t.variant, family[t.name]), []).append(t)
    several_families = len(set(family.values())) > 1
    arrays: dict[tuple, Array] = {}
    for (stage, variant, fam), members in groups.items():
        if all(t.complete() for t in members):
            continue  # every row of this array is done: only later stages need work
        name = "-".join([stage] + [variant] * bool(variant) + [fam] * several_families)
        needs = [arrays[key] for key in dict.fromkeys((n.stage, n.variant, fam) for n in members[0].needs)
                 if key in arrays]
        mine = [(t.env, t.seed) for t in members]
        same_rows = [a for a in needs if [(t.env, t.seed) for t in a.tasks] == mine]  # aftercorr pairs task i with task i
        arrays[(stage, variant, fam)] = Array(name, stage, members, same_rows, [a for a in needs if a not in same_rows],
                                              profile.resources(stage))
    out = list(arrays.values())
    if profile.later_stages_first:
        for a in reversed(out):  # the arrays that wait for it come later in the list, so are niced already
            a.nice = max((b.nice + NICE_STEP for b in out if any(n is a for n in b.needs + b.waits)), default=0)
    return out


def describe(arrays: list[Array], profile: Profile, job_ids: dict[str, str] | None = None) -> list[str]:
    if not arrays:
        return ["nothing to submit: every task's outputs exist and validate"]
    width = max(len(a.name) for a in arrays)
    lines = [f"{'array':{width}}  tasks  resources per task / sbatch options"]
    for a in arrays:
        ident = f" job {job_ids[a.name]}" if job_ids else ""
        lines.append(f"{a.name:{width}}  {len(a.tasks):5}  {a.resources.describe()}{ident}")
        lines.append(f"{'':{width}}         {' '.join(a.sbatch_options(profile, job_ids))}")
    report = job_ids.get("report") if job_ids else None
    lines.append(f"{'report':{width}}      1  {profile.resources('report').describe()}"
                 + (f" job {report}" if report else ""))
    lines.append(f"{'':{width}}         --dependency=afterany:" + ":".join(
        (job_ids or {}).get(a.name, f"<{a.name}>") for a in arrays) + "  (cccad report, once every array has ended)")
    widest = max(arrays, key=lambda a: len(a.tasks))
    rows = [f"{i}: {t.env} seed {t.seed}" for i, t in enumerate(widest.tasks)]
    lines.append(f"array task index -> row ({widest.name}): " + ", ".join(rows))
    return lines


# ----------------------------------------------------------------------------- jobs

def node_address(node: str) -> str:
    """A node's NodeAddr in SLURM (its hostname unless the cluster gives another address)."""
    out = subprocess.run(["scontrol", "-o", "show", "node", node], capture_output=True, text=True, timeout=60).stdout
    return next((kv.split("=", 1)[1] for kv in out.split() if kv.startswith("NodeAddr=")), node)


class StageJob:
    """One task of a study as a SLURM array task runs it (pickled by submitit). It rebuilds the
    study's tasks, so the task's config is resolved and checked where it runs."""

    def __init__(self, study_file: str, overrides: list[str], runs_root: str, task_name: str,
                 env: dict[str, str] | None = None, container: Container | None = None):
        self.args = (study_file, list(overrides), runs_root, task_name, dict(env or {}), container)

    def task(self) -> Task:
        study_file, overrides, runs_root, name, _, _ = self.args
        _, tasks = build_tasks(study_file, overrides, runs_root)
        return next(t for t in tasks if t.name == name)

    def __call__(self) -> str:
        import submitit

        task = self.task()
        os.environ.update({k: str(v) for k, v in self.args[4].items()})
        if task.complete():  # (the same for every process of the task)
            print(f"{task.name}: outputs exist and validate", flush=True)
            return "cached"
        # its dependencies ended well when they ran; under this code and config their runs may
        # since have become another's (a changed identity): never build on those
        if stale := [u.name for u in task.needs if not u.complete()]:
            raise RuntimeError(f"{task.name}: upstream {stale[0]} is not complete under this study's config and code "
                               "(missing, or made under another config hash): submit the study again")
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one process per SLURM task: RANK, WORLD_SIZE, MASTER_ADDR/PORT for torch
            dist = submitit.helpers.TorchDistributedEnvironment()
            dist.export(set_cuda_visible_devices=False)
            # the first node's address as SLURM reaches it: its name may not resolve
            os.environ["MASTER_ADDR"] = node_address(dist.master_addr)
        rank = env.global_rank
        task.run_dir.mkdir(parents=True, exist_ok=True)  # (whichever rank comes first)
        log = task_log(task) if rank == 0 else open(task.run_dir / f"log.rank{rank}.txt", "ab")
        command, child_env = task_command(task), None
        self._ident = f"{task.run_dir.resolve()}:{rank}"
        if container := self.args[5]:  # the stage runs in the image, on the runs folder bound in
            command, child_env = container.wrap(command, Path(self.args[2]), self._ident, self.args[4])
            # SLURM signals this job's processes, and a podman container is none of them
            signal.signal(signal.SIGTERM, self._pass_on)
        with log:
            self._child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
            while (rc := self._child.poll()) is None:  # poll, not wait: checkpoint() polls it from a signal handler
                time.sleep(0.5)
        if rank == 0:
            record_end(task.run_dir, rc, f"SLURM job {os.environ.get('SLURM_JOB_ID')}")
        if rc != 0 or (rank == 0 and not task.complete()):
            raise RuntimeError(f"{task.name}: {describe_exit(rc)}, see {log.name}")
        print(f"{task.name}: done", flush=True)
        return "done"

    def _pass_on(self, signum, frame=None):
        """Signal the stage (through its container, if any)."""
        if self._child.poll() is None:
            if container := self.args[5]:
                container.signal(self._child, self._ident, signum)
            else:
                self._child.send_signal(signum)

    def checkpoint(self, *args, **kwargs):
        """Submitit calls this on USR2 (preemption, time limit) before requeueing: let the stage
        save a checkpoint and exit, then requeue this same task."""
        import submitit

        child = getattr(self, "_child", None)
        if child is not None and child.poll() is None:
            self._pass_on(signal.SIGUSR2)
            deadline = time.time() + 60
            while child.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            if child.returncode is not None and submitit.JobEnvironment().global_rank == 0:
                record_end(self.task().run_dir, child.returncode,
                           f"SLURM job {os.environ.get('SLURM_JOB_ID')}, requeued")
        return submitit.helpers.DelayedSubmission(StageJob(*self.args))


class ReportJob:
    """The study's last job: `cccad report` once every array has ended, however it ended."""

    def __init__(self, study_file: str, overrides: list[str], runs_root: str):
        self.args = (study_file, list(overrides), runs_root)

    def __call__(self) -> str:
        from cccad.report import write_report

        path = write_report(*self.args)
        print(f"report: {path}", flush=True)
        return str(path)


def slurm_command(*args: str) -> str:
    """A SLURM client command's output; when it fails, or SLURM is not installed, ClusterError
    with SLURM's own message, one line."""
    try:
        proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ClusterError(f"{args[0]}: not found (SLURM's client commands are not installed here)") from None
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{args[0]}: no answer from SLURM within 60 s") from None
    if proc.returncode:
        raise ClusterError(f"{args[0]}: {first_line(proc.stderr or proc.stdout) or f'exit code {proc.returncode}'}")
    return proc.stdout


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def check_cluster(profile: Profile, profile_path: str, dry_run: bool, log) -> None:
    """Before anything is submitted: the cluster answers and has the profile's partition. A dry
    run without a cluster to ask says so and goes on."""
    try:
        partitions = set(slurm_command("sinfo", "-h", "-o", "%R").split())
    except ClusterError as e:
        if not dry_run:
            raise
        log(f"(partition not checked: {e})")
        return
    if profile.partition and profile.partition not in partitions:
        raise ClusterError(f"{profile_path}: partition: '{profile.partition}' is not a partition of this cluster "
                           f"(sinfo lists: {', '.join(sorted(partitions)) or 'none'})")


def submit(study_file: str, overrides: list[str], runs_root: str, profile_path: str, dry_run: bool,
           log=print) -> list[Array]:
    profile = load_profile(profile_path)
    base, tasks = build_tasks(study_file, overrides, runs_root)
    container = profile.container()
    if container and not dry_run and (problem := container.problem()):
        raise ClusterError(f"{profile_path}: container_image: {problem}")
    root = Path(runs_root) / base.study.name
    arrays = plan(tasks, profile)
    log(f"study {base.study.name}: {len(tasks)} tasks, {sum(len(a.tasks) for a in arrays)} to submit "
        f"in {len(arrays)} arrays (profile {profile_path})")
    check_cluster(profile, profile_path, dry_run, log)
    if dry_run or not arrays:
        for line in describe(arrays, profile):
            log(line)
        return arrays
    active = [name for name, job in task_jobs(root).items() if job["state"] in ACTIVE]
    if active:
        raise ClusterError(f"study {base.study.name}: {len(active)} tasks are still pending or running in SLURM "
                           f"(e.g. {active[0]}); see cccad status, wait or scancel them before resubmitting")
    with locked(root, "cccad submit"):
        for task in (t for a in arrays for t in a.tasks):
            set_aside(task, root, log)
        job_ids = submit_arrays(arrays, profile, base.study.name, root, (str(study_file), list(overrides), str(runs_root)))
    record = {"study": str(study_file), "overrides": list(overrides), "profile": str(profile_path),
              "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "report_job": job_ids["report"],
              "arrays": [{"name": a.name, "stage": a.stage, "job_id": job_ids[a.name],
                          "tasks": {t.name: f"{job_ids[a.name]}_{i}" if len(a.tasks) > 1 else job_ids[a.name]
                                    for i, t in enumerate(a.tasks)},
                          "needs": [n.name for n in a.needs + a.waits]} for a in arrays]}
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{job_ids[arrays[0].name]}"
    atomic_write_json(root / ".submit" / f"{stamp}.json", record)
    for line in describe(arrays, profile, job_ids):
        log(line)
    return arrays


def submit_arrays(arrays: list[Array], profile: Profile, study: str, root: Path, study_args: tuple) -> dict[str, str]:
    """Submit the arrays and the report job through submitit: {array name: job id, "report": id}.
    The arrays that wait for no other wait for a held gate job instead, so no task starts until the
    whole study is in; cancelling the gate then lets them start (afterany). If sbatch refuses one,
    the arrays already submitted are cancelled, then the gate, and submitit's files of this
    submission removed, then ClusterError with sbatch's message: all of it or nothing. (Holding
    the arrays themselves would not do: sbatch does not check a held job against the nodes.)"""
    import submitit

    folder = root / ".slurm"
    before = set(folder.iterdir()) if folder.is_dir() else set()
    job_ids: dict[str, str] = {}

    def executor(res: Resources, name: str, dependency: str | None, **extra):
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues, )
        layout = {"nodes": res.nodes, "ntasks_per_node": res.processes}
        if res.flexible:  # a node range, the number of processes fixed (as sbatch options: submitit
            # counts tasks as nodes x tasks per node, only for results we do not read)
            layout, extra = {}, {**extra, "nodes": f"{res.min_nodes}-{res.nodes}", "ntasks": res.nodes * res.processes}
        ex.update_parameters(
            job_name=f"{study}:{name}", partition=profile.partition, account=profile.account,
            qos=profile.qos, time=res.time_min, **layout,
            cpus_per_task=res.cpus_per_task, gpus_per_task=res.gpus_per_task or None, mem=f"{int(res.mem_gb * 1024)}M",
            signal_delay_s=profile.signal_delay_s, dependency=dependency,
            array_parallelism=profile.array_parallelism, additional_parameters={**profile.sbatch, **extra})
        return ex

    name, gate = "gate", None
    try:
        where = (f"--{k}={v}" for k, v in (("partition", profile.partition), ("account", profile.account),
                                            ("qos", profile.qos)) if v)
        gate = slurm_command("sbatch", "--parsable", "--hold", f"--job-name={study}:gate", "--output=/dev/null",
                             *where, "--wrap=true").strip().split(";")[0]
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint; it is said below
            for array in arrays:
                name = array.name
                dependency = array.dependency(job_ids)
                ex = executor(array.resources, name, dependency or f"afterany:{gate}",
                              **({"kill-on-invalid-dep": "yes"} if dependency else {}),
                              **({"nice": array.nice} if array.nice else {}))
                with ex.batch():
                    jobs = [ex.submit(StageJob(*study_args, t.name, profile.env, profile.container()))
                            for t in array.tasks]
                job_ids[name] = jobs[0].job_id.split("_")[0]
            name = "report"
            job_ids[name] = executor(profile.resources("report"), name, "afterany:" + ":".join(job_ids.values())).submit(
                ReportJob(*study_args)).job_id
        slurm_command("scancel", gate)
    except BaseException as e:
        for ids in (list(job_ids.values()), [gate] if gate else []):  # the gate last: it holds the rest back
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
        for path in set(folder.iterdir()) - before if folder.is_dir() else ():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if isinstance(e, ClusterError):
            raise
        if isinstance(e, (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError)):
            undone = f"; cancelled the {len(job_ids)} arrays submitted before it" if job_ids else ""
            raise ClusterError(f"sbatch refused the {name} job: {first_line(str(e)) or type(e).__name__}{undone}; "
                               "nothing was submitted") from None
        raise
    return job_ids


# ----------------------------------------------------------------------------- status

ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
          "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "PREEMPTED")


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / ".submit").glob("*.json"))]


def slurm_states(job_ids: list[str]) -> dict[str, dict]:
    """{job id ("<array id>_<index>", or "<id>" for a lone task): {"state", "exit_code", "runs"}} from sacct (every run of a requeued
    task is a row, `-D`; "runs" counts those that started; an array's tasks that never started are one folded row, expanded
    here, so a range cancelled before it split reads as cancelled) and squeue (the pending tasks' state now)."""
    if not job_ids:
        return {}
    out: dict[str, dict] = {}
    acct = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-j", ",".join(job_ids), "--format=JobID,State,ExitCode,Start"],
                          capture_output=True, text=True, timeout=60)
    rows = [line.split("|") for line in acct.stdout.splitlines()]
    for job, state, code, _ in rows:  # a folded range ("7_[1-3%4]") holds tasks that never started
        if "[" in job:
            for index in folded(job):
                out[index] = {"runs": 0, "state": state.split()[0], "exit_code": code}
    for job, state, code, start in rows:
        if "[" not in job:
            entry = out.setdefault(job, {"runs": 0})
            entry.update(state=state.split()[0], exit_code=code)
            entry["runs"] += start not in ("None", "Unknown", "")
    queue = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i|%T"],
                           capture_output=True, text=True, timeout=60)
    for line in queue.stdout.splitlines():
        job, state = line.split("|")
        out.setdefault(job, {"runs": 0, "exit_code": ""})["state"] = state
    return out


def folded(job: str) -> list[str]:
    """The task ids of an array's folded record: "7_[1-3,5%4]" -> 7_1, 7_2, 7_3, 7_5."""
    array, _, ranges = job.partition("_[")
    ids = []
    for part in ranges.rstrip("]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        ids += [f"{array}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def task_jobs(root: Path) -> dict[str, dict]:
    """Each task's latest SLURM job: {task name: {"job", "array", "state", "exit_code", "runs"}}."""
    latest: dict[str, tuple[str, str]] = {}
    for rec in records(root):
        for arr in rec["arrays"]:
            for name, job in arr["tasks"].items():  # "<array id>_<i>", or "<id>" (one task: no array)
                latest[name] = (job, arr["name"])
    states = slurm_states(sorted({job.split("_")[0] for job, _ in latest.values()}))
    return {name: {"job": job, "array": array, "state": "UNKNOWN", "exit_code": "", "runs": 0, **states.get(job, {})}
            for name, (job, array) in latest.items()}


def status(study_file: str, overrides: list[str], runs_root: str) -> list[dict]:
    """One row per task: stage, task, state (done, running, pending, requeued, failed, blocked,
    stale, not submitted), job, requeues, how its last attempt ended, and for failures the logs to read."""
    base, tasks = build_tasks(study_file, overrides, runs_root)
    root = Path(runs_root) / base.study.name
    jobs = task_jobs(root)
    rows = []
    for t in tasks:
        job = jobs.get(t.name)
        state = slurm = job["state"] if job else ""
        if t.complete():
            state = "done"
        elif not job:
            state = "stale" if t.other_config() else "not submitted"
        elif slurm in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
            state = "pending"
        elif slurm in ACTIVE:
            state = "running"
        elif slurm == "CANCELLED" and job["runs"] == 0:
            state = "blocked"  # cancelled before it ever started: a task it needs failed
        elif t.other_config():
            state = "stale"  # its folder holds another config's run: submitting again moves it aside
        else:
            state = "failed"
        logs = ""
        if state == "failed":
            logs = f"{t.run_dir / 'log.txt'} {root / '.slurm' / (job['job'] + '_0_log.err')}"
        rows.append({"stage": t.stage, "task": t.name, "state": state, "job": job["job"] if job else "",
                     "slurm_state": slurm, "requeues": max(job["runs"] - 1, 0) if job else 0,
                     "ended": last_end(t.run_dir) or "", "logs": logs})
    return rows
