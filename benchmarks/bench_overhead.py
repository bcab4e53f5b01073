"""The overhead benchmark: ``python benchmarks/bench_overhead.py [options]``.

The same as ``distributed-reptile bench overhead [options]``; ``--help`` lists the options.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["overhead", *sys.argv[1:]]))
