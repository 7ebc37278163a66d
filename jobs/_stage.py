"""Shared by the entry points in jobs/: `python jobs/<stage>.py -c CONFIG [key=value ...]`, also
under `accelerate launch`, is the same as `cccad run <stage> -c CONFIG [key=value ...]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_stage(stage: str):
    from cccad.cli import main

    sys.exit(main(["run", stage, *sys.argv[1:]]))
