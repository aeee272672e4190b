"""The reference system's entry point, kept as an alias: `python main.py [hydra overrides]`
is the `sparsetrain` command (same Hydra app, same configs, same run directories)."""

import sys

from sparsetrain.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
