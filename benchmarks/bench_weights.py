"""The weights benchmark: ``python benchmarks/bench_weights.py [options]``.

The same as ``distributed-reptile bench weights [options]``; ``--help`` lists the options.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["weights", *sys.argv[1:]]))
