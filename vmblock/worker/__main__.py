"""``python -m vmblock.worker``: one worker process (``process.main``)."""

import sys

from vmblock.worker.process import main

sys.exit(main())
