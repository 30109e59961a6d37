"""The Synapse module: configuration, wiring and the updater registry."""

import logging
from typing import Any

from synapse.module_api import ModuleApi

from synapse_bgupdates import metrics
from synapse_bgupdates.admin_api import BackgroundUpdatesAdminApi
from synapse_bgupdates.config import Config, parse_config
from synapse_bgupdates.homeserver import HomeserverUpdates
from synapse_bgupdates.scheduler import SynapseScheduler
from synapse_bgupdates.updater import BackgroundUpdater

logger = logging.getLogger(__name__)

# One updater per homeserver in this process, keyed by server name, so that
# modules loaded before or after this one share it.
_UPDATERS: dict[str, tuple[BackgroundUpdater, HomeserverUpdates]] = {}


def get_updater(api: ModuleApi) -> BackgroundUpdater:
    """Return the background updater of the homeserver that ``api`` belongs to.

    Other modules call this from their ``__init__`` to register handlers. The
    updates run only where ``synapse_bgupdates.BackgroundUpdatesModule`` is
    enabled in ``homeserver.yaml``.

    Added in synapse-bgupdates 0.1.0.
    """
    return _get_or_create(api)[0]


def _get_or_create(api: ModuleApi) -> tuple[BackgroundUpdater, HomeserverUpdates]:
    entry = _UPDATERS.get(api.server_name)
    if entry is not None:
        return entry

    updater = BackgroundUpdater(
        scheduler=SynapseScheduler(api),
        run_db_interaction=api.run_db_interaction,
        dialect=lambda: homeserver.dialect(),
    )
    homeserver = HomeserverUpdates(api, updater.gate)
    updater.database_name = homeserver.main_database_name()
    _UPDATERS[api.server_name] = (updater, homeserver)

    # Every module has loaded by the time the reactor runs this.
    api.delayed_background_call(
        0, _warn_if_not_enabled, updater, desc="bgupdates_check_enabled"
    )
    return updater, homeserver


def _warn_if_not_enabled(updater: BackgroundUpdater) -> None:
    if updater.module_enabled or not updater.registered_updates:
        return
    logger.warning(
        "Background updates %s are registered, but they never run because"
        " synapse_bgupdates.BackgroundUpdatesModule is not in the modules"
        " list of homeserver.yaml",
        ", ".join(updater.registered_updates),
    )


class BackgroundUpdatesModule:
    """Serves the Background Updates admin API and runs background updates.

    Enable it in ``homeserver.yaml``::

        modules:
          - module: synapse_bgupdates.BackgroundUpdatesModule
            config: {}

    Added in synapse-bgupdates 0.1.0.
    """

    def __init__(self, config: Config, api: ModuleApi):
        self._api = api
        updater, homeserver = _get_or_create(api)
        updater.config = config
        updater.module_enabled = True
        self.updater = updater

        homeserver.register_controller()
        if api.worker_name is None:
            self._serve_admin_api(homeserver, updater)
        else:
            # Workers serve only a few admin endpoints of their own (media,
            # for one), which a copy of the main process's admin resource
            # would hide. Synapse serves background_updates on the main
            # process only.
            logger.info("Worker %s keeps its own admin resource", api.worker_name)
        metrics.ENABLED.set(1)

        if api.should_run_background_tasks():
            updater.start()
            logger.info("This instance runs the module's background updates")
        else:
            logger.info(
                "This instance does not run background tasks; it serves the admin"
                " API and leaves updates to the instance that does"
            )

    def _serve_admin_api(
        self, homeserver: HomeserverUpdates, updater: BackgroundUpdater
    ) -> None:
        admin_api = BackgroundUpdatesAdminApi(self._api, homeserver, updater)
        resource = homeserver.build_admin_resource(admin_api.servlets())
        if resource is None:
            logger.error(
                "The Background Updates admin API is not served by this module;"
                " the homeserver's own version stays in place"
            )
            return
        self._api.register_web_resource("/_synapse/admin", resource)

    @staticmethod
    def parse_config(config: Any) -> Config:
        """Validate the module's ``config`` block; see ``Config`` for the keys."""
        return parse_config(config)
