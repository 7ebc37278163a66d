"""Stages: each is a small module with the same five names, so the CLI, the local runner and the
cluster submitter treat them alike.

    NEEDS        upstream stages whose run folder this stage reads
    INPUT_KEYS   {upstream stage: (config key, path inside the upstream run folder it receives)};
                 an upstream not in NEEDS is wired when a variant sets its key to "@<stage>"
    PER_VARIANT  whether the stage runs once per study variant
    decided_by(cfg)             the config subset that decides the outputs (its hash stamps them)
    preflight(cfg)              raise ConfigError before any work if inputs are missing
    run(cfg, run_dir, log)      do the work; return the metrics dict
    outputs_valid(cfg, run_dir) whether outputs exist and validate (beyond metrics.json)
"""
from cccad.stages import collect, evaluate, pretrain_encoder, probe, train

# in dependency order
STAGES = {"collect": collect, "pretrain_encoder": pretrain_encoder, "train": train, "evaluate": evaluate,
          "probe": probe}
