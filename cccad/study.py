"""A study: the stage graph of each env's family (Darkroom: collect -> pretrain_encoder -> train ->
evaluate, probe; Atari: train_agent -> collect -> train_encoder_decoder, train_jepa -> probes),
expanded over seeds and variants into tasks.

Run folders are `runs/<study>/{stage}-{env}-seed{seed}` (per-variant stages:
`{stage}-{variant}-{env}-seed{seed}`). Every task's config is resolved, and so validated, when the
graph is built: a bad study fails before anything runs. `run_local` runs tasks in dependency
order in subprocesses (as a cluster would), skipping tasks whose outputs exist and validate; a
failed task only stops the tasks that need it. A task's folder that holds a run of another config
(the study changed since) is moved aside, kept, before the task runs (`set_aside`).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cccad.config import Config, ConfigError, dump_yaml, load_config, nest, read_yaml
from cccad.fs import Busy, atomic_write_text, locked, read_json, taken_over
from cccad.runinfo import LOG, MANIFEST, METRICS, describe_exit, read_metrics, record_end, run_folder, run_hash, unreadable_metrics
from cccad.stages import STAGES, needs
from cccad.trainer import EXIT_INTERRUPTED


@dataclass
class Task:
    stage: str
    env: str
    seed: int
    variant: str | None
    run_dir: Path
    config: Config
    needs: list["Task"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name

    def complete(self) -> bool:
        metrics = read_metrics(self.run_dir)
        return (metrics is not None and metrics.get("config_hash") == run_hash(self.config, self.stage)
                and STAGES[self.stage].outputs_valid(self.config, self.run_dir))

    def other_config(self) -> str | None:
        """The config hash of the run in this task's folder (its manifest's, else its metrics')
        when it is another config's (None: no run there, or this task's own)."""
        recorded = next((r["config_hash"] for f in (MANIFEST, METRICS)
                         if isinstance(r := read_json(self.run_dir / f), dict) and r.get("config_hash")), None)
        return recorded if recorded and recorded != run_hash(self.config, self.stage) else None


REPLACED = ".replaced"  # <study>/.replaced/<task>-<config hash>: runs of an earlier config of a task


def set_aside(task: Task, root: Path, log=print) -> None:
    """If the task's folder holds a run of another config, move it to <study>/.replaced/, kept,
    so the task starts afresh (its trainer would refuse the other run's checkpoints). A folder in
    use by a runner is not moved: Busy, naming it."""
    if (old := task.other_config()) is None:
        return
    with locked(task.run_dir, "cccad, moving it aside"):
        (root / REPLACED).mkdir(parents=True, exist_ok=True)
        dest, n = root / REPLACED / f"{task.name}-{old}", 1
        while dest.exists():  # the same config's run replaced before
            n += 1
            dest = root / REPLACED / f"{task.name}-{old}-{n}"
        task.run_dir.rename(dest)
    log(f"{task.name}: its folder held a run of another config (hash {old}); moved to {dest}")


BUILTIN_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def env_layer(study_file: Path, env: str) -> tuple[dict, str]:
    """`envs/<env>.yaml` in the study file's folder or the nearest parent that has one, else the
    suite's own configs/envs/."""
    places = [p / "envs" for p in study_file.resolve().parents] + [BUILTIN_CONFIGS / "envs"]
    path = next((d / f"{env}.yaml" for d in places if (d / f"{env}.yaml").is_file()), None)
    if path is None:
        known = sorted(p.stem for p in (BUILTIN_CONFIGS / "envs").glob("*.yaml"))
        raise ConfigError(f"{study_file}: study.envs: unknown env '{env}' (known: {', '.join(known)})")
    layer = read_yaml(path)
    if set(layer) - {"env"}:
        raise ConfigError(f"{path}: an env file may only set the 'env' section")
    return layer, str(path)


def task_layers(study_file: Path, variants: dict, env: tuple[dict, str], seed: int, variant: str | None) -> list:
    """The layers a study's task puts over its study file: its env's file (`env_layer`), its seed,
    and its variant's keys."""
    extra = [env, ({"seed": seed}, f"{study_file} (study.seeds)")]
    if variant is not None:
        where = f"{study_file} (study.variants.{variant})"
        extra.append((nest(variants[variant], where), where))
    return extra


def build_tasks(study_file: str | Path, overrides: list[str] = (), runs_root: str | Path = "runs") -> tuple[Config, list[Task]]:
    """All tasks of a study in dependency order."""
    study_file = Path(study_file)
    base = load_config(study_file, overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "seed" or key.startswith("inputs"):
            raise ConfigError(f"command line: {key}: set by the study runner "
                              f"(seeds come from study.seeds, inputs from upstream tasks)")
    st = base.study
    out = Path(runs_root) / st.name
    stages = [s for s in STAGES if s in st.stages]  # registry order is dependency order
    env_layers = {env: env_layer(study_file, env) for env in st.envs}
    families = {env: load_config(study_file, overrides, extra=[env_layers[env]]).env.family for env in st.envs}
    for s in stages:
        for family in dict.fromkeys(families.values()):
            for need in needs(s, family) if family in STAGES[s].FAMILIES else ():
                if need not in stages:
                    raise ConfigError(f"{study_file}: study.stages: '{s}' needs '{need}' for {family} envs, "
                                      "which is not listed")
    tasks: list[Task] = []
    index: dict[tuple, Task] = {}
    hashes: dict[tuple, str] = {}

    def stage_hash(stage: str, env: str, seed: int, variant: str | None) -> str:
        if (stage, env, seed, variant) not in hashes:
            cfg = load_config(study_file, overrides, extra=layers(env, seed, variant))
            hashes[(stage, env, seed, variant)] = run_hash(cfg, stage)
        return hashes[(stage, env, seed, variant)]

    def layers(env: str, seed: int, variant: str | None) -> list:
        return task_layers(study_file, st.variants, env_layers[env], seed, variant)

    def upstream_variant(need: str, env: str, seed: int, variant: str | None) -> str | None:
        """The variant whose run of `need` a `variant` task reads: its own for per-variant stages, and
        for shared stages its own only where the variant changes what decides that stage's outputs
        (e.g. a variant's encoder kind, for pre-training); else the shared run."""
        if variant is None or STAGES[need].PER_VARIANT:
            return variant
        return variant if stage_hash(need, env, seed, None) != stage_hash(need, env, seed, variant) else None

    def make(stage: str, env: str, seed: int, variant: str | None) -> Task:
        mod = STAGES[stage]
        wanted = list(needs(stage, families[env]))
        first = st.seeds[0]
        if not wanted and seed != first and stage_hash(stage, env, seed, variant) == stage_hash(stage, env, first, variant):
            seed = first  # reads no run and the seed does not decide its outputs: one run serves every seed
        if (stage, env, seed, variant) in index:
            return index[(stage, env, seed, variant)]
        extra = layers(env, seed, variant)
        optional = [u for u in mod.INPUT_KEYS if u not in wanted and families[env] in STAGES[u].FAMILIES]
        if optional:  # wired where the task's config asks for "@<stage>"
            plain = load_config(study_file, overrides, extra=extra)
            for up in optional:
                key = mod.INPUT_KEYS[up][0]
                section, name = key.split(".")
                if getattr(getattr(plain, section), name) == f"@{up}":
                    if up not in stages:
                        raise ConfigError(f"{study_file}: {key}: '@{up}' but study.stages does not list '{up}'")
                    wanted.append(up)
        upstream, inputs = [], {}
        for need in wanted:
            up = make(need, env, seed, upstream_variant(need, env, seed, variant))
            upstream.append(up)
            key, inside = mod.INPUT_KEYS[need]
            section, name = key.split(".")
            inputs.setdefault(section, {})[name] = str((up.run_dir / inside).resolve())
        cfg = load_config(study_file, overrides, extra=extra + [(inputs, "study runner")])
        task = Task(stage, env, seed, variant, out / run_folder(stage, env, seed, variant), cfg, upstream)
        index[(stage, env, seed, variant)] = task
        tasks.append(task)
        return task

    for env in st.envs:
        for seed in st.seeds:
            for stage in stages:
                if families[env] in STAGES[stage].FAMILIES:  # each env runs its family's part of the graph
                    for variant in (st.variants if STAGES[stage].PER_VARIANT else [None]):
                        make(stage, env, seed, variant)
    for stage in stages:
        if not any(t.stage == stage for t in tasks):
            raise ConfigError(f"{study_file}: study.stages: '{stage}' runs for {' and '.join(STAGES[stage].FAMILIES)} "
                              f"envs, and study.envs has none")
    return base, tasks


def task_command(task: Task) -> list[str]:
    """The command that runs `task` (`cccad run` on its resolved config, which is written to
    runs/<study>/.tasks/), as `cccad local` and cluster jobs both run it. Absolute paths: a
    container runs it elsewhere, with the runs folder bound at the same path."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    config_file = task.run_dir.parent / ".tasks" / f"{task.name}.yaml"
    atomic_write_text(config_file, dump_yaml(task.config))
    return [sys.executable, "-m", "cccad", "run", task.stage, "-c", str(config_file.resolve()),
            "--out", str(task.run_dir.resolve())]


def task_log(task: Task):
    """The task's log file (run folder's log.txt), opened for appending: reruns add to it."""
    task.run_dir.mkdir(parents=True, exist_ok=True)
    return open(task.run_dir / LOG, "ab")


class StopRequested(Exception):
    """`cccad local` stopped while a task ran: by Ctrl-C (SIGINT), or by a scheduler's or `podman
    stop`'s SIGTERM or SIGUSR2, which it passes on; the task stopped at a checkpoint if it trains.
    Exits 130 after Ctrl-C, 75 (requeue me) after the others."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 130 if signum == signal.SIGINT else EXIT_INTERRUPTED


def run_task(task: Task, log) -> int:
    """Run one task in its own process, its output to its log; the return code, recorded in the
    log. SIGTERM and SIGUSR2 are passed on to the task (a scheduler or `podman stop` signals this
    process only); Ctrl-C reaches it by itself. Either way the task saves a checkpoint and exits,
    and StopRequested is raised; a second Ctrl-C kills the task."""
    caught: list[int] = []
    with task_log(task) as logf:
        child = subprocess.Popen(task_command(task), stdout=logf, stderr=subprocess.STDOUT)

        def pass_on(signum, frame):
            caught.append(signum)
            child.send_signal(signum)

        previous = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGUSR2)}
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            caught.append(signal.SIGINT)
            log(f"{'[stop]':10}{task.name}: stopping at its next checkpoint (Ctrl-C again to kill it)")
            try:
                rc = child.wait()
            except KeyboardInterrupt:
                child.kill()
                rc = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    how = record_end(task.run_dir, rc, "cccad local")
    if caught:
        raise StopRequested(f"{task.name} stopped by {signal.Signals(caught[0]).name} ({how}); run the study again "
                            "to resume it", caught[0])
    return rc


def run_local(tasks: list[Task], root: Path, log=print) -> dict[str, str]:
    """Run every incomplete task in order, holding the study folder's lock; returns {task name:
    done|cached|failed|blocked}."""
    status: dict[str, str] = {}
    with locked(root, "cccad local") as previous:
        if line := taken_over(root, previous):
            log(line)
        for task in tasks:
            if any(status[n.name] not in ("done", "cached") for n in task.needs):
                status[task.name] = "blocked"
                log(f"{'[blocked]':10}{task.name}: an upstream task failed")
                continue
            if task.complete():
                status[task.name] = "cached"
                log(f"{'[cached]':10}{task.name}")
                continue
            log(f"{'[run]':10}{task.name}" + (f" ({why})" if (why := unreadable_metrics(task.run_dir)) else ""))
            t0 = time.perf_counter()
            try:
                set_aside(task, root, log)
            except Busy as e:  # a runner holds its folder: this task fails, the others go on
                status[task.name] = "failed"
                log(f"{'[FAILED]':10}{task.name}: {e}")
                continue
            rc = run_task(task, log)
            ok = rc == 0 and task.complete()
            status[task.name] = "done" if ok else "failed"
            log(f"{'[done]' if ok else '[FAILED]':10}{task.name} ({time.perf_counter() - t0:.0f}s)"
                + ("" if ok else f", {describe_exit(rc)}, see {task.run_dir / LOG}"))
    return status
