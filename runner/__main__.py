"""``python -m runner``: the runner command."""

import sys

from runner.start import main

sys.exit(main())
