"""An example Synapse module with a background update of its own.

It keeps a per-room count of events in the table ``example_room_event_counts``
and fills it from the homeserver's ``events`` table, a batch of rooms at a
time, with the updater of synapse-bgupdates. Start the backfill with::

    curl -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \\
        -d '{"job_name": "example_room_event_counts"}' \\
        http://127.0.0.1:8008/_synapse/admin/v1/background_updates/start_job

Enable both modules in ``homeserver.yaml``, with this file on Python's path::

    modules:
      - module: synapse_bgupdates.BackgroundUpdatesModule
      - module: room_event_counts.RoomEventCountsModule
"""

import logging
from typing import Any

from synapse.module_api import ModuleApi

from synapse_bgupdates import Cursor, get_updater

logger = logging.getLogger(__name__)

UPDATE_NAME = "example_room_event_counts"


class RoomEventCountsModule:
    """Registers the ``example_room_event_counts`` background update."""

    def __init__(self, config: dict[str, Any], api: ModuleApi):
        self._api = api
        self._updater = get_updater(api)
        self._updater.register_update_handler(UPDATE_NAME, self._backfill_batch)

    @staticmethod
    def parse_config(config: Any) -> dict[str, Any]:
        return dict(config or {})

    async def _backfill_batch(self, progress: dict[str, Any], batch_size: int) -> int:
        """Count the events of the next ``batch_size`` rooms, by room ID order."""
        after_room_id = str(progress.get("after_room_id", ""))
        return await self._api.run_db_interaction(
            "example_room_event_counts_batch",
            self._backfill_batch_txn,
            after_room_id,
            batch_size,
        )

    def _backfill_batch_txn(
        self, txn: Cursor, after_room_id: str, batch_size: int
    ) -> int:
        txn.execute(
            """
            CREATE TABLE IF NOT EXISTS example_room_event_counts (
                room_id TEXT NOT NULL PRIMARY KEY,
                event_count BIGINT NOT NULL
            )
            """
        )
        txn.execute(
            "SELECT room_id FROM rooms WHERE room_id > ? ORDER BY room_id LIMIT ?",
            (after_room_id, batch_size),
        )
        room_ids = [row[0] for row in txn.fetchall()]

        for room_id in room_ids:
            txn.execute("SELECT COUNT(*) FROM events WHERE room_id = ?", (room_id,))
            (event_count,) = txn.fetchone()
            txn.execute(
                """
                INSERT INTO example_room_event_counts (room_id, event_count)
                VALUES (?, ?)
                ON CONFLICT (room_id) DO UPDATE SET event_count = EXCLUDED.event_count
                """,
                (room_id, event_count),
            )

        # The counts and the progress commit together, so a crash repeats no
        # room and skips none.
        if len(room_ids) < batch_size:
            self._updater.finish_update_txn(txn, UPDATE_NAME)
        else:
            self._updater.save_progress_txn(
                txn, UPDATE_NAME, {"after_room_id": room_ids[-1]}
            )
        return len(room_ids)
