import sys

from cccad.cli import main

sys.exit(main())
