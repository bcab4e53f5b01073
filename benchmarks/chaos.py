"""The chaos run: ``python benchmarks/chaos.py [--outer-steps 100] [--nodes 2] [--output DIR]``.

Faults at random times and together (learner workers killed three ways, the task-source actor
killed twice, a task hung past its time limit, a node of a two-node cluster lost and a new one
joining, the driver SIGKILLed and resumed); the final meta weights and the tasks drawn must equal
an undisturbed run's. See :mod:`distributed_reptile.bench.chaos`.
"""

import sys

from distributed_reptile.bench.chaos import main

if __name__ == "__main__":
    sys.exit(main())
