"""`python -m pivotal ...`: the command line (also what `torchrun -m pivotal` runs)."""

import sys

from pivotal.cli import main

sys.exit(main())
