"""``python -m collector`` is the same as ``energy-collector``."""

import sys

from collector.cli import main

sys.exit(main())
