import sys

from cccad.cli import main

if __name__ == "__main__":  # (and not in a spawned worker process, which imports this module again)
    sys.exit(main())
