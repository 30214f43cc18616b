"""Run the command line as ``python -m mvlpt``."""

import sys

from .cli import main

sys.exit(main())
