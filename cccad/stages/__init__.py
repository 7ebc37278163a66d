"""Stages: each is a small module with the same names, so the CLI, the local runner and the
cluster submitter treat them alike.

    NEEDS        upstream stages whose run folder this stage reads (or {family: those stages}, when
                 they differ by env family)
    INPUT_KEYS   {upstream stage: (config key, path inside the upstream run folder it receives)};
                 an upstream not in NEEDS is wired when a variant sets its key to "@<stage>"
    PER_VARIANT  whether the stage runs once per study variant; a shared stage runs once, and again
                 for a variant that changes what decides its outputs and reads them. A stage that
                 needs none runs once for all seeds when the seed does not decide its outputs
    FAMILIES     the env families it runs for ("darkroom", "atari"); a study runs, for each env,
                 the listed stages of that env's family
    TRAINS       whether it trains through the training loop, and so may run as several
                 processes (DDP or ZeRO); stages that do not run as one process
    REPORT       its sections of the study report (cccad/sections.py)
    COMPARED     the metrics a study's comparisons between variants compare (a shared stage's,
                 between variants with runs of their own)
    across_runs(runs)           (optional) metrics relative to the other complete runs of the same
                                env in the report: adds keys to each run's metrics; runs are
                                (config, metrics) pairs
    decided_by(cfg)             the config subset that decides the outputs (its hash stamps them)
    preflight(cfg)              raise ConfigError before any work if inputs are missing
    run(cfg, run_dir, log)      do the work; return the metrics dict
    outputs_valid(cfg, run_dir) whether outputs exist and validate (beyond metrics.json)
    summary(metrics)            a complete run in a line, after `cccad local`

A stage never imports another; what several share lives below them (cccad/data, cccad/models, ...).
Adding one: its module here, its name in `config.STAGE_NAMES` (the one list of stages, in dependency
order), and for `accelerate launch` users a two-line jobs/<stage>.py.
"""
from importlib import import_module

from cccad.config import STAGE_NAMES

STAGES = {name: import_module(f"cccad.stages.{name}") for name in STAGE_NAMES}


def needs(stage: str, family: str) -> tuple[str, ...]:
    """The upstream stages `stage` reads for an env of `family`."""
    n = STAGES[stage].NEEDS
    return n.get(family, ()) if isinstance(n, dict) else n
