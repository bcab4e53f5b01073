"""The scaling benchmark: ``python benchmarks/bench_scaling.py [options]``.

The same as ``distributed-reptile bench scaling [options]``; ``--help`` lists the options.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["scaling", *sys.argv[1:]]))
