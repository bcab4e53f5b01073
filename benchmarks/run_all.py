"""Every benchmark with its default settings: ``python benchmarks/run_all.py [--output DIR]``.

The same as ``distributed-reptile bench all [--output DIR]``.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["all", *sys.argv[1:]]))
