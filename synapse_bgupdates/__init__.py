"""Background Updates admin API and a background-update engine for Synapse."""

from synapse_bgupdates.config import Config
from synapse_bgupdates.module import BackgroundUpdatesModule, get_updater
from synapse_bgupdates.store import Cursor, NewUpdate, UpdateAlreadyQueuedError
from synapse_bgupdates.updater import BackgroundUpdater, UpdateHandler

__version__ = "0.1.0"

__all__ = [
    "BackgroundUpdater",
    "BackgroundUpdatesModule",
    "Config",
    "Cursor",
    "NewUpdate",
    "UpdateAlreadyQueuedError",
    "UpdateHandler",
    "get_updater",
]
