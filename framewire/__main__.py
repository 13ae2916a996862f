"""``python -m framewire`` is the ``framewire`` command."""

import sys

from framewire.cli import main

sys.exit(main())
