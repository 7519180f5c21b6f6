"""``python -m sepconv.cli``: the ``sepconv`` command."""

import sys

from . import main

sys.exit(main())
