"""``python -m clinvert``: the command line (what ``--nproc`` and ``torchrun -m clinvert`` start)."""

import sys

from clinvert.cli import main

if __name__ == "__main__":
    sys.exit(main())
