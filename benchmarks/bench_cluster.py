"""The cluster benchmark: ``python benchmarks/bench_cluster.py [options]``.

The same as ``distributed-reptile bench cluster [options]``; ``--help`` lists the options.
Needs root (network namespaces); stops every process it started, also on Ctrl-C.
"""

import sys

from distributed_reptile.bench import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["cluster", *sys.argv[1:]]))
