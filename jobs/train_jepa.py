"""Stage `train_jepa`: see jobs/_stage.py."""
from _stage import run_stage

if __name__ == "__main__":
    run_stage("train_jepa")
