"""`python -m multitask.hub`: the short command; the code lives in `multitask.io.hub`."""

import logging
import sys

from multitask.errors import cli
from multitask.io.hub import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(cli(main))
