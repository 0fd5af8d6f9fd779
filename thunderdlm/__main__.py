"""``python -m thunderdlm ...``: the same command line as the ``thunderdlm`` script."""
import sys

from thunderdlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
