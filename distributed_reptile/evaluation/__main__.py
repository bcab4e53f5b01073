"""``python -m distributed_reptile.evaluation CHECKPOINT ...`` (same as ``distributed-reptile evaluate``)."""

import sys

from distributed_reptile.evaluation.cli import cli_main

sys.exit(cli_main())
