"""``python -m runner``: the runner command."""

import sys

from runner.cli import main

sys.exit(main())
