"""The bridge to the homeserver's own background updates.

Everything in this package that reaches past the public ModuleApi into the
homeserver's private objects is in this file. The updaters, the admin
resource and the listeners are looked up when the module starts. If one is
missing, an error is logged and the feature that needs it is turned off.
"""

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from synapse.module_api import ModuleApi
from synapse.types import JsonDict
from twisted.web.resource import Resource
from twisted.web.server import Request

from synapse_bgupdates.gate import BatchGate
from synapse_bgupdates.jobs import HomeserverUpdateRow
from synapse_bgupdates.store import Cursor, Dialect, UpdateAlreadyQueuedError

logger = logging.getLogger(__name__)

Servlet = Callable[..., Awaitable[tuple[int, JsonDict]]]

BACKGROUND_UPDATES_PREFIX = b"/_synapse/admin/v1/background_updates/"


class HomeserverUpdates:
    """The homeserver's per-database updaters, read and steered by the module."""

    def __init__(self, api: ModuleApi, gate: BatchGate):
        self._api = api
        self._gate = gate
        self._hs: Any = getattr(api, "_hs", None)
        self._databases: list[Any] = self._find_databases()

    def _find_databases(self) -> list[Any]:
        try:
            databases = list(self._hs.get_datastores().databases)
            for database in databases:
                database.name()
                _ = database.updates.enabled
        except AttributeError as error:
            logger.error(
                "Cannot reach the homeserver's background updaters (%s); status,"
                " pause and resume cover only the module's own updates",
                error,
            )
            return []
        return databases

    # Reading and steering the homeserver's updaters.

    @property
    def enabled(self) -> bool:
        """Whether every database's updates are enabled."""
        return all(database.updates.enabled for database in self._databases)

    def set_enabled(self, enabled: bool) -> None:
        """Pause or resume the homeserver's updates on every database."""
        for database in self._databases:
            database.updates.enabled = enabled
            if enabled:
                database.updates.start_doing_background_updates()

    def current_updates(self) -> dict[str, dict[str, object]]:
        """Return the update in progress on each database, as status shows it."""
        current: dict[str, dict[str, object]] = {}
        for database in self._databases:
            update = database.updates.get_current_update()
            if update is None:
                continue
            current[database.name()] = {
                "name": update.name,
                "total_item_count": update.total_item_count,
                "total_duration_ms": update.total_duration_ms,
                "average_items_per_ms": update.average_items_per_ms(),
            }
        return current

    def has_update_handler(self, update_name: str) -> bool:
        """Return whether the main database's updater can run an update."""
        main = self._main_database()
        handlers = (
            getattr(main.updates, "_background_update_handlers", None) if main else None
        )
        return isinstance(handlers, dict) and update_name in handlers

    async def queue_updates(self, rows: Sequence[HomeserverUpdateRow]) -> None:
        """Add rows to the homeserver's queue in one transaction and start them.

        Raises:
            UpdateAlreadyQueuedError: one of the updates is already queued;
                nothing was added.
        """
        await self._api.run_db_interaction(
            "bgupdates_queue_homeserver_updates", _insert_homeserver_rows_txn, rows
        )
        main = self._main_database()
        if main is not None:
            main.updates.start_doing_background_updates()

    # Facts about the main database, for the module's own updater.

    def main_database_name(self) -> str:
        """Return the name under which status lists the main database."""
        main = self._main_database()
        return "master" if main is None else str(main.name())

    def dialect(self) -> Dialect:
        """Return the SQL engine of the main database."""
        engine = self._hs.get_datastores().main.database_engine
        # Synapse's engine classes are PostgresEngine and Sqlite3Engine.
        if "postgres" in type(engine).__name__.lower():
            return Dialect.POSTGRES
        return Dialect.SQLITE

    def _main_database(self) -> Any:
        try:
            return self._hs.get_datastores().main.db_pool
        except AttributeError:
            return None

    # Controlling each batch of the homeserver's updates.

    def register_controller(self) -> None:
        """Send each batch of the homeserver's updates through the gate.

        Only the first module that registers controller callbacks gets them.
        If another module came first, pause still works through the updaters'
        own switch, but batches of both updaters may overlap.
        """
        self._api.register_background_update_controller_callbacks(
            on_update=self._on_update
        )
        main = self._main_database()
        registered = getattr(
            getattr(main, "updates", None), "_on_update_callback", None
        )
        if registered is not None and registered != self._on_update:
            logger.warning(
                "Another module controls the homeserver's background updates, so"
                " their batches may run at the same time as the module's own"
            )

    @asynccontextmanager
    async def _on_update(
        self, update_name: str, database_name: str, oneshot: bool
    ) -> AsyncIterator[int]:
        # The homeserver's own background_updates settings keep their meaning.
        settings = self._hs.config.background_updates
        if settings.sleep_enabled:
            await self._api.sleep(settings.sleep_duration_ms / 1000)
        async with self._gate.batch(database_name, update_name):
            yield settings.update_duration_ms

    # The admin resource.

    def build_admin_resource(
        self, servlets: dict[tuple[str, str], Servlet]
    ) -> Resource | None:
        """Build the resource for ``/_synapse/admin``.

        It serves ``servlets`` (keyed by method and path below
        ``/_synapse/admin/v1/background_updates/``) and passes every other
        request to a freshly built copy of the homeserver's admin resource.

        Returns:
            The resource, or None if the homeserver's admin resource cannot be
            built, in which case the module must not take over the path.
        """
        try:
            from synapse.http.server import JsonResource
            from synapse.rest import admin
        except ImportError as error:
            logger.error("Cannot build the homeserver's admin resource: %s", error)
            return None

        homeserver_admin = JsonResource(self._hs, canonical_json=False)
        admin.register_servlets(self._hs, homeserver_admin)

        own = JsonResource(self._hs, canonical_json=False)
        for (method, path), servlet in servlets.items():
            pattern = re.compile(
                "^" + re.escape(BACKGROUND_UPDATES_PREFIX.decode() + path) + "$"
            )
            own.register_paths(method, [pattern], servlet, servlet.__qualname__)

        endpoints = self._client_endpoints()
        if endpoints is None:
            return None
        return AdminResource(own, homeserver_admin, endpoints)

    def _client_endpoints(self) -> "ClientEndpoints | None":
        endpoints = ClientEndpoints()
        try:
            for listener in self._hs.config.server.listeners:
                options = listener.http_options
                if options is None or not any(
                    "client" in resource.names for resource in options.resources
                ):
                    continue
                if hasattr(listener, "port"):
                    endpoints.add_tcp(listener.bind_addresses, listener.port)
                else:
                    endpoints.unix_paths.add(listener.path)
        except AttributeError as error:
            logger.error(
                "Cannot tell which listeners serve the client API (%s); the"
                " homeserver's own admin API stays in place",
                error,
            )
            return None
        return endpoints


# Bind addresses that accept connections on every local address.
_WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


class ClientEndpoints:
    """The local addresses of the listeners that serve the client API.

    Listener tags cannot tell listeners apart: two listeners may share a tag,
    and every Unix socket listener has the tag ``unix``.
    """

    def __init__(self) -> None:
        self.tcp: list[tuple[frozenset[str], int]] = []
        self.unix_paths: set[str] = set()

    def add_tcp(self, bind_addresses: Sequence[str], port: int) -> None:
        """Record a TCP listener."""
        self.tcp.append((frozenset(bind_addresses), port))

    def contains(self, request: Request) -> bool:
        """Return whether the request arrived on one of these listeners."""
        local = request.getHost()  # type: ignore[no-untyped-call]
        port = getattr(local, "port", None)
        if port is None:
            path = getattr(local, "name", None)
            if isinstance(path, bytes):
                path = path.decode(errors="replace")
            return path in self.unix_paths
        host = getattr(local, "host", "")
        return any(
            port == listener_port
            and (host in addresses or not addresses.isdisjoint(_WILDCARD_ADDRESSES))
            for addresses, listener_port in self.tcp
        )


class AdminResource(Resource):
    """Serves ``/_synapse/admin``: background updates here, the rest as before.

    Synapse attaches module resources to every HTTP listener, but serves its
    admin API only on listeners with the ``client`` resource. Requests that
    arrive on other listeners get a 404 M_UNRECOGNIZED.
    """

    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(
        self,
        own: Resource,
        homeserver_admin: Resource,
        client_endpoints: ClientEndpoints,
    ):
        super().__init__()  # type: ignore[no-untyped-call]
        self._own = own
        self._homeserver_admin = homeserver_admin
        self._client_endpoints = client_endpoints

    def render(self, request: Request) -> Any:
        if not self._client_endpoints.contains(request):
            request.setResponseCode(404)
            request.setHeader(  # type: ignore[no-untyped-call]
                b"Content-Type", b"application/json"
            )
            return b'{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}'
        if (request.path or b"").startswith(BACKGROUND_UPDATES_PREFIX):
            return self._own.render(request)  # type: ignore[no-untyped-call]
        return self._homeserver_admin.render(request)  # type: ignore[no-untyped-call]


def _insert_homeserver_rows_txn(
    txn: Cursor, rows: Sequence[HomeserverUpdateRow]
) -> None:
    for row in rows:
        # The homeserver's table has a unique update_name. DO NOTHING plus the
        # rowcount detects a queued update on PostgreSQL and SQLite alike; the
        # raise rolls back the rows inserted before it.
        txn.execute(
            """
            INSERT INTO background_updates (update_name, progress_json, depends_on)
            VALUES (?, ?, ?)
            ON CONFLICT (update_name) DO NOTHING
            """,
            (row.update_name, row.progress_json, row.depends_on),
        )
        if txn.rowcount == 0:
            raise UpdateAlreadyQueuedError(row.update_name)
