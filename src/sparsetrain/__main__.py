"""`python -m sparsetrain ...` = the `sparsetrain` command."""

import sys

from sparsetrain.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
