"""``python -m hitrate``: the same as the ``hitrate`` command."""

import sys

from .cli import main

sys.exit(main())
