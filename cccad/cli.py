"""`cccad` command line: run one stage, a whole study locally or on SLURM, and the study's status."""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import re
import sys
import time
from pathlib import Path

from cccad.checkpoint import CheckpointError
from cccad.cluster import ClusterError
from cccad.config import ConfigError, dump_yaml, load_config, source_of
from cccad.container import check_args
from cccad.data.store import DatasetError
from cccad.fs import Busy, NoSpace, atomic_write_text, locked, taken_over
from cccad.report import write_report
from cccad.runinfo import RunLog, read_metrics, remove_metrics, run_folder, write_manifest, write_metrics
from cccad.runtime import set_threads
from cccad.stages import STAGES
from cccad.study import StopRequested
from cccad.trainer import Diverged, Interrupted, OtherProcessDone, PeerLost

# bad input or a run that cannot start (nothing done): exit 2
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, ClusterError, Busy)
# a run that failed on its way (its checkpoints stay for a rerun): exit 1
RUN_FAILURES = (NoSpace, PeerLost, Diverged)


def outcome(e: BaseException) -> tuple[str, int] | None:
    """The one line and exit code of what ended a command, or None for a bug (its traceback shows)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, NoSpace):
        e = NoSpace(f"{e.filename or 'a file'}: no space left on device")
    if isinstance(e, RUN_FAILURES):
        return f"cccad: error: {e}", 1
    if isinstance(e, USER_ERRORS + (OSError,)):
        return f"cccad: error: {e}", 2
    if isinstance(e, Interrupted):
        return f"cccad: interrupted: {e}", e.exit_code
    if isinstance(e, StopRequested):
        return f"cccad: interrupted: {e}", e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return "cccad: interrupted (Ctrl-C)", 130
    return None


@contextlib.contextmanager
def named_sources(path, overrides):
    """A ConfigError that names a config key but not where it came from gets its source."""
    try:
        yield
    except ConfigError as e:
        if m := re.match(r"([a-z_]+\.[a-z_.]+): ", str(e)):
            raise ConfigError(f"{source_of(path, overrides, m.group(1))}: {e}") from None
        raise


def cmd_run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    stage = STAGES[args.stage]
    if cfg.env.family not in stage.FAMILIES:
        raise ConfigError(f"{source_of(args.config, args.overrides, 'env.name')}: env.name: stage {args.stage} runs "
                          f"for {' and '.join(stage.FAMILIES)} envs, this config's env is {cfg.env.name}")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and not stage.TRAINS:
        raise ConfigError(f"stage {args.stage} runs as one process (it does not train); it was started as {processes}")
    with named_sources(args.config, args.overrides):
        stage.preflight(cfg)
    run_dir = Path(args.out or Path("runs") / run_folder(args.stage, cfg.env.name, cfg.seed))
    main = int(os.environ.get("RANK", "0")) == 0  # of several processes, the main one writes the run's files
    set_threads()
    with locked(run_dir, f"cccad run {args.stage}") if main else contextlib.nullcontext() as previous:
        return run_stage(args, cfg, run_dir, main, previous)


def run_stage(args, cfg, run_dir: Path, main: bool, previous_holder: str | None) -> int:
    """`cccad run`'s work, in a run folder it holds: its files, the stage, its metrics; what it
    says also in the folder's log.txt."""
    stage = STAGES[args.stage]
    log = RunLog(run_dir, main)
    if line := taken_over(run_dir, previous_holder):
        log(line)
    try:
        if main:
            remove_metrics(run_dir)  # until this run ends, its folder is not complete
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
            write_manifest(run_dir, cfg, args.stage)
        t0 = time.perf_counter()
        metrics = stage.run(cfg, run_dir, log=log)
        metrics["wall_seconds"] = time.perf_counter() - t0
        write_metrics(run_dir, cfg, args.stage, metrics)
    except BaseException as e:
        if ended := outcome(e):
            log.write_only(ended[0])  # (printed by main)
        raise
    finally:
        log.close()
    print(f"{args.stage}: done, results in {run_dir}")
    return 0


def cmd_local(args) -> int:
    from cccad.study import build_tasks, run_local

    base, tasks = build_tasks(args.study, args.overrides, args.runs)
    root = Path(args.runs) / base.study.name
    print(f"study {base.study.name}: {len(tasks)} tasks under {root}")
    status = run_local(tasks, root, log=functools.partial(print, flush=True))
    failed = [n for n, s in status.items() if s in ("failed", "blocked")]
    for task in tasks:  # each complete run in a line, as its stage sums it up
        if task.complete():
            print(f"  {task.name}: {STAGES[task.stage].summary(read_metrics(task.run_dir))}")
    for name in failed:
        print(f"  {status[name]}: {name}")
    print(f"study {base.study.name}: {len(tasks) - len(failed)}/{len(tasks)} tasks complete; results in {root}")
    print(f"report: {write_report(args.study, args.overrides, args.runs)}")
    return 1 if failed else 0


def cmd_report(args) -> int:
    print(f"report: {write_report(args.study, args.overrides, args.runs)}")
    return 0


def cmd_submit(args) -> int:
    from cccad.cluster import submit

    submit(args.study, args.overrides, args.runs, args.cluster, args.dry_run, log=functools.partial(print, flush=True))
    return 0


def cmd_status(args) -> int:
    from cccad.cluster import status

    rows = status(args.study, args.overrides, args.runs)
    cols = ("stage", "task", "state", "job", "requeues", "ended", "logs")
    for r in rows:  # a cell a word (empty: -), so the columns split on spaces; the logs last
        r.update(job=r["job"] or "-", ended=r["ended"].replace("exit code ", "exit:").replace("killed by ", "") or "-")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(f"{c:{widths[c]}}" for c in cols).rstrip())
    for r in rows:
        print("  ".join(f"{str(r[c]):{widths[c]}}" for c in cols).rstrip())
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


class Parser(argparse.ArgumentParser):
    """Command-line mistakes get one line, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="cccad", description="In-context RL and world-model studies, "
                                "locally (cccad local) or one stage at a time (cccad run).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one stage", description="Run one stage with a config file and "
                       "key=value overrides; resumes from the run folder's latest checkpoint.")
    r.add_argument("stage", choices=list(STAGES))
    r.add_argument("-c", "--config", required=True, help="YAML config file")
    r.add_argument("--out", help="run folder (default runs/{stage}-{env}-seed{seed})")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    r.set_defaults(func=cmd_run)
    def study_command(name, func, help, description, runs_note=""):
        """A command on a whole study: STUDY, --runs and key=value overrides."""
        c = sub.add_parser(name, help=help, description=description)
        c.add_argument("study", help="study config, e.g. configs/studies/smoke.yaml")
        c.add_argument("--runs", default="runs", help=f"root folder for run outputs (default runs){runs_note}")
        c.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every task")
        c.set_defaults(func=func)
        return c

    study_command("local", cmd_local, "run a whole study on this machine",
                  "Run a study's stage graph in dependency order on this machine, skipping tasks whose "
                  "outputs exist and validate.")
    sb = study_command("submit", cmd_submit, "submit a study to SLURM as job arrays",
                       "Submit a study's incomplete tasks to SLURM: one job array per stage (and variant), "
                       "chained with aftercorr, resources from the cluster profile. Returns once submitted; "
                       "see cccad status.", "; must be on a filesystem the cluster's nodes share")
    sb.add_argument("--cluster", required=True, help="cluster profile, e.g. slurm/profiles/local.yaml")
    sb.add_argument("--dry-run", action="store_true", help="print the arrays, sizes, dependencies and "
                    "resources without submitting")
    study_command("report", cmd_report, "write the study's report (tables and plots) from its runs",
                  "Gather every run's metrics, manifest and TensorBoard scalars into runs/<study>/report/report.md "
                  "with PNG plots: mean and 95% interval over seeds per env and variant, and every run that is "
                  "not complete named.")
    study_command("status", cmd_status, "each task's state: done, running, pending, failed ...",
                  "One row per task of a study (give the overrides it was submitted with): its state from the "
                  "run folders and SLURM (done, running, pending, failed with its logs, blocked by a failed "
                  "upstream task, not submitted) and how often it was requeued.")
    return p


def main(argv=None) -> int:
    p = parser()
    # overrides may come before or after options: gather the key=value leftovers
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("-")]
    if unknown or (rest and not hasattr(args, "overrides")):
        p.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:
        args.overrides = args.overrides + rest
    try:
        check_args(args)  # inside a container image: outputs only to a folder bound from the host
        code = args.func(args)
    except OtherProcessDone:
        code = 0
    except (Exception, KeyboardInterrupt) as e:
        if (ended := outcome(e)) is None:
            raise
        line, code = ended
        print(line, file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a process of a distributed run: its files are written and closed. torch.distributed and
        # DeepSpeed can leave C++ threads that abort the interpreter's own exit (SIGABRT), which
        # would read as a failure: end here, with the run's exit code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
