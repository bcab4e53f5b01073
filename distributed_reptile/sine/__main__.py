"""``python -m distributed_reptile.sine --output DIR``: train, evaluate on 100 unseen tasks, plot."""

import sys

from distributed_reptile.sine.run import main

sys.exit(main())
