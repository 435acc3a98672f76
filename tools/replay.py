#!/usr/bin/env python3
"""Replay block traces through vmblock's cache kernels (and libcachesim with --compare).

    .venv/bin/python tools/replay.py --trace ../shared/traces/cloudPhysicsIO.csv \\
        --cache-size 0.01 --compare
    .venv/bin/python tools/replay.py --synthetic zipf:alpha=1.0,blocks=1000000,requests=10000000 \\
        --cache-size 0.1 --compare --json
    .venv/bin/python tools/replay.py \\
        --trace zipf:alpha=1.0,blocks=200000,requests=2000000 --vdisk A \\
        --trace scan:blocks=400000,requests=2000000 --vdisk B \\
        --group gold:priority=10,min=50%,max=100% --group bulk:priority=0,min=5%,max=100% \\
        --assign A=gold --assign B=bulk --cache-size 160M --json

See ``vmblock/cache/replay.py`` for the report fields and what ``seconds`` measures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmblock.cache.replay import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
