"""``python -m rmdiag COMMAND ...``: the command line, also as ``torchrun ... -m rmdiag ...``
(multi-process training; README, Command line)."""

import sys

from rmdiag.cli import main

if __name__ == "__main__":
    sys.exit(main())
