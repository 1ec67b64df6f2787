"""``python -m clinvert``: the command line (what ``--nproc`` and ``torchrun -m clinvert`` start)."""

from clinvert.cli import run

if __name__ == "__main__":
    run()
