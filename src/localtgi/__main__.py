"""`python -m localtgi`: the same launcher as the `localtgi` console script."""

import sys

from localtgi.cli import main

sys.exit(main())
