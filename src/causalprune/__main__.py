"""``python -m causalprune …`` runs the command-line tool (as ``causalprune …`` does)."""

import sys

from .cli import main

sys.exit(main())
