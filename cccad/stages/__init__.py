"""Stages: each is a small module with the same names, so the CLI, the local runner and the
cluster submitter treat them alike.

    NEEDS        upstream stages whose run folder this stage reads
    INPUT_KEYS   {upstream stage: (config key, path inside the upstream run folder it receives)};
                 an upstream not in NEEDS is wired when a variant sets its key to "@<stage>"
    PER_VARIANT  whether the stage runs once per study variant
    FAMILIES     the env families it runs for ("darkroom", "atari"); a study runs, for each env,
                 the listed stages of that env's family
    TRAINS       whether it trains through the training loop, and so may run as several
                 processes (DDP or ZeRO); stages that do not run as one process
    decided_by(cfg)             the config subset that decides the outputs (its hash stamps them)
    preflight(cfg)              raise ConfigError before any work if inputs are missing
    run(cfg, run_dir, log)      do the work; return the metrics dict
    outputs_valid(cfg, run_dir) whether outputs exist and validate (beyond metrics.json)
"""
from cccad.stages import (collect, evaluate, pretrain_encoder, probe, train, train_dynamics_reward_predictor,
                          train_encoder_decoder, train_jepa, train_jepa_decoder, train_reward_predictor)

# in dependency order
STAGES = {"collect": collect, "pretrain_encoder": pretrain_encoder, "train": train, "evaluate": evaluate,
          "probe": probe, "train_encoder_decoder": train_encoder_decoder, "train_jepa": train_jepa,
          "train_jepa_decoder": train_jepa_decoder, "train_reward_predictor": train_reward_predictor,
          "train_dynamics_reward_predictor": train_dynamics_reward_predictor}
