"""`python -m lightx2v ...`: the `lightx2v` command (what torchrun runs: `torchrun --nproc-per-node 2 -m
lightx2v generate ...`, docs/parallel.md)."""

import sys

from lightx2v.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
