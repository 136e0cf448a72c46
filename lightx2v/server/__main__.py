"""`python -m lightx2v.server ...`: the same as `lightx2v serve ...`."""

import sys

from lightx2v.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
