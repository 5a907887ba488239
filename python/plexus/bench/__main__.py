"""`python -m plexus.bench`: what the plexus-bench command runs (and what each rank runs)."""

import sys

from .cli import main

sys.exit(main())
