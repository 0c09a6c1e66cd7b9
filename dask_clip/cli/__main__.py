"""``python -m dask_clip.cli``."""

import sys

from . import main

sys.exit(main())
