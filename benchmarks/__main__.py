"""``python -m benchmarks``: the performance benchmarks (see :mod:`benchmarks.performance`)."""

import sys

from benchmarks.performance.__main__ import main

sys.exit(main())
