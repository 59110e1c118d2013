"""``python -m slimvlm ARGS`` = the ``slimvlm`` command line."""

import sys

from .cli import main

sys.exit(main())
