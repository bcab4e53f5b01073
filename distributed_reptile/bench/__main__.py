"""``python -m distributed_reptile.bench <name> [options]``."""

import sys

from distributed_reptile.bench import cli_main

sys.exit(cli_main())
