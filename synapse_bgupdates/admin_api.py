"""Handlers of the Background Updates admin API.

The paths, request bodies and responses are those of Synapse's documented API:
``GET status``, ``GET``/``POST enabled`` and ``POST start_job`` below
``/_synapse/admin/v1/background_updates/``.
"""

import logging
from http import HTTPStatus

from synapse.module_api import ModuleApi, parse_json_object_from_request
from synapse.module_api.errors import Codes, SynapseError
from synapse.types import JsonDict
from twisted.web.server import Request

from synapse_bgupdates import metrics
from synapse_bgupdates.homeserver import HomeserverUpdates, Servlet
from synapse_bgupdates.jobs import (
    EVENT_RESIGN,
    HOMESERVER_JOB_NAMES,
    build_job_rows,
    quote_value,
)
from synapse_bgupdates.store import UpdateAlreadyQueuedError
from synapse_bgupdates.updater import BackgroundUpdater

logger = logging.getLogger(__name__)


class BackgroundUpdatesAdminApi:
    """The three endpoints, over the homeserver's updaters and the module's."""

    def __init__(
        self,
        api: ModuleApi,
        homeserver: HomeserverUpdates,
        updater: BackgroundUpdater,
    ):
        self._api = api
        self._homeserver = homeserver
        self._updater = updater

    def servlets(self) -> dict[tuple[str, str], Servlet]:
        """Return the handlers keyed by HTTP method and path below the prefix."""
        return {
            ("GET", "status"): self.get_status,
            ("GET", "enabled"): self.get_enabled,
            ("POST", "enabled"): self.post_enabled,
            ("POST", "start_job"): self.post_start_job,
        }

    async def get_status(self, request: Request) -> tuple[int, JsonDict]:
        """Report the update in progress on each database.

        ``current_updates`` has the homeserver's update on a database, or the
        module's own update when the homeserver runs none there. The top-level
        ``module_updates`` key lists the module's queue with each update's
        state, failures and saved progress.
        """
        await self._require_admin(request)

        current = self._homeserver.current_updates()
        own = self._updater.current_status()
        if own is not None:
            current.setdefault(self._updater.database_name, own)

        queue = await self._updater.get_queue()
        return HTTPStatus.OK, {
            "enabled": self._enabled(),
            "current_updates": current,
            "module_updates": self._updater.describe_queue(queue),
        }

    async def get_enabled(self, request: Request) -> tuple[int, JsonDict]:
        """Report whether background updates run on every database."""
        await self._require_admin(request)
        return HTTPStatus.OK, {"enabled": self._enabled()}

    async def post_enabled(self, request: Request) -> tuple[int, JsonDict]:
        """Pause or resume the homeserver's updates and the module's.

        A batch already running completes; a pause stops the next one.
        """
        user_id = await self._require_admin(request)
        body = parse_json_object_from_request(request)

        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise SynapseError(
                HTTPStatus.BAD_REQUEST,
                "'enabled' parameter must be a boolean (true or false), "
                f"got {quote_value(enabled)}",
                Codes.INVALID_PARAM,
            )

        self._updater.gate.set_enabled(enabled)
        self._homeserver.set_enabled(enabled)
        metrics.ENABLED.set(1 if enabled else 0)
        if enabled:
            self._updater.wake()
        logger.info(
            "Background updates %s by %s", "resumed" if enabled else "paused", user_id
        )
        return HTTPStatus.OK, {"enabled": enabled}

    async def post_start_job(self, request: Request) -> tuple[int, JsonDict]:
        """Queue a rebuild job of the homeserver or an update of a module."""
        user_id = await self._require_admin(request)
        body = parse_json_object_from_request(request)

        if "job_name" not in body:
            raise SynapseError(
                HTTPStatus.BAD_REQUEST,
                "Missing params: ['job_name']. Give the name of the job to start,"
                f" one of: {', '.join(self._valid_job_names())}",
                Codes.MISSING_PARAM,
            )
        job_name = body["job_name"]
        if not isinstance(job_name, str) or job_name not in self._valid_job_names():
            raise SynapseError(
                HTTPStatus.BAD_REQUEST,
                f"Invalid job_name {quote_value(job_name)}; expected one of: "
                f"{', '.join(self._valid_job_names())}",
                Codes.INVALID_PARAM,
            )

        try:
            if job_name in HOMESERVER_JOB_NAMES:
                await self._homeserver.queue_updates(build_job_rows(job_name, body))
            else:
                await self._updater.queue_update(job_name)
        except UpdateAlreadyQueuedError:
            raise SynapseError(
                HTTPStatus.BAD_REQUEST,
                f"Job {job_name} is already in queue of background updates.",
            ) from None

        logger.info("Background job %s started by %s", job_name, user_id)
        return HTTPStatus.OK, {}

    def _valid_job_names(self) -> list[str]:
        names = set(HOMESERVER_JOB_NAMES) | set(self._updater.registered_updates)
        if not self._homeserver.has_update_handler(EVENT_RESIGN):
            names.discard(EVENT_RESIGN)
        return sorted(names)

    def _enabled(self) -> bool:
        return self._homeserver.enabled and self._updater.gate.enabled

    async def _require_admin(self, request: Request) -> str:
        requester = await self._api.get_user_by_req(request)  # type: ignore[arg-type]
        user_id = requester.user.to_string()
        if not await self._api.is_user_admin(user_id):
            raise SynapseError(
                HTTPStatus.FORBIDDEN, "You are not a server admin", Codes.FORBIDDEN
            )
        return user_id
