"""Stage `train_dynamics_reward_predictor`: see jobs/_stage.py."""
from _stage import run_stage

if __name__ == "__main__":
    run_stage("train_dynamics_reward_predictor")
