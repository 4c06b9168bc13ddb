"""localtgi: a TGI-compatible text-generation server for CPU.

Start it with the `localtgi` command (or `python -m localtgi`); embed it with `create_app(Settings(...))`.
"""

from localtgi.app import create_app
from localtgi.settings import Limits, Settings

__all__ = ["Limits", "Settings", "create_app"]
