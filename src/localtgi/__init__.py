"""localtgi: a TGI-compatible text-generation server for CPU (see `localtgi.app.create_app`)."""

from localtgi.settings import Limits, Settings

__all__ = ["Limits", "Settings"]
