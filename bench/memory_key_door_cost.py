"""What the memory design on dark_key_to_door (configs/studies/memory_key_door.yaml: 3 seeds, AD and
the four CompressedAD variants, their in-training evaluations included) costs, measured as
bench/full_study_cost.py measures the full study: each stage's rate through its real code at the
study's sizes, one thread, scaled to its configured work. Its CPU core-hours over this machine's 2
cores are the reference's wall time at best."""
from common import ROOT
from full_study_cost import main

if __name__ == "__main__":
    main(["--study", str(ROOT / "configs" / "studies" / "memory_key_door.yaml")], "memory_key_door_cost")
