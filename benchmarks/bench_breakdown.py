"""The breakdown benchmark: ``python benchmarks/bench_breakdown.py [options]``.

The same as ``distributed-reptile bench breakdown [options]``; ``--help`` lists the options.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["breakdown", *sys.argv[1:]]))
