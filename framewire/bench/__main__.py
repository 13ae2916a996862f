"""``python -m framewire.bench`` is ``framewire bench``."""

import sys

from framewire.bench.bench import main

sys.exit(main())
