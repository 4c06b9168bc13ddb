"""Suite-wide settings.

Property tests draw the same examples on every run (`derandomize`), so a red `make test` is always
reproducible; set `HYPOTHESIS_PROFILE=explore` to search with fresh random examples instead.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
