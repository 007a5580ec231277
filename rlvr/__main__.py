"""`python -m rlvr train RECIPE ...`: the `rlvr` command, for launchers that start modules
(`torchrun -m rlvr train ...`, `accelerate launch -m rlvr train ...`)."""

import sys

from rlvr.cli import main

sys.exit(main())
