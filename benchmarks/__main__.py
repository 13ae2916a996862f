"""``python -m benchmarks`` is ``framewire bench``."""

import sys

from benchmarks.bench import main

sys.exit(main())
