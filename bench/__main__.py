"""`python -m bench [--quick] [--out DIR] ...`: run bpfjit's benchmark harness (see bpfjit/benchmark.py).

Run it from the repository root; the outputs go to bench/out/ unless --out says otherwise.
"""

from __future__ import annotations

import sys

from bpfjit.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
