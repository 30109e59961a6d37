"""Fixtures that run real Synapse homeserver processes for end-to-end tests.

``SYNAPSE_BGUPDATES_TEST_DB`` selects the database engine: ``sqlite`` (the
default) or ``postgres``, which needs a PostgreSQL server on 127.0.0.1:5432
that lets the ``postgres`` role in without a password.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import pytest

from synapse_bgupdates.testing.databases import DatabaseKind, database_kind_from_env
from synapse_bgupdates.testing.homeserver import (
    HomeserverProcess,
    Template,
    prepare_template,
)


class StartHomeserver(Protocol):
    """Signature of the ``start_homeserver`` fixture."""

    def __call__(
        self,
        *,
        modules: Sequence[Mapping[str, Any]] = (),
        extra_config: Mapping[str, Any] | None = None,
    ) -> HomeserverProcess: ...


@pytest.fixture(scope="session")
def database_kind() -> DatabaseKind:
    """The database engine that this test run uses."""
    return database_kind_from_env()


@pytest.fixture(scope="session")
def homeserver_template(
    tmp_path_factory: pytest.TempPathFactory, database_kind: DatabaseKind
) -> Iterator[Template]:
    """A database on which Synapse's own background updates have finished.

    Prepared once per test run and dropped at its end.
    """
    workdir = tmp_path_factory.mktemp("homeserver-template")
    with prepare_template(workdir, database_kind) as template:
        yield template


@pytest.fixture
def start_homeserver(
    homeserver_template: Template, tmp_path: Path
) -> Iterator[StartHomeserver]:
    """A function that starts a homeserver from the template.

    Each call starts another homeserver in its own directory under the test's
    ``tmp_path``. All of them are stopped and their databases dropped when the
    test ends.
    """
    numbers = itertools.count()
    with ExitStack() as cleanup:

        def start(
            *,
            modules: Sequence[Mapping[str, Any]] = (),
            extra_config: Mapping[str, Any] | None = None,
        ) -> HomeserverProcess:
            homeserver = HomeserverProcess(
                tmp_path / f"homeserver-{next(numbers)}",
                template=homeserver_template,
                modules=modules,
                extra_config=extra_config,
            )
            cleanup.callback(homeserver.close)
            homeserver.start()
            return homeserver

        yield start


@pytest.fixture
def homeserver(start_homeserver: StartHomeserver) -> HomeserverProcess:
    """A running homeserver with no modules, started from the template."""
    return start_homeserver()


# The homeserver processes inherit the environment; the example module is
# imported from the examples folder of this checkout.
_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(_EXAMPLES), os.environ.get("PYTHONPATH")])
)

MODULE_CONFIG: dict[str, Any] = {"sleep_duration_ms": 50, "poll_interval_ms": 200}
"""Settings of the module under test: short sleeps keep the tests quick."""


def with_module(
    config: Mapping[str, Any] | None = None, *, example: bool = True
) -> list[dict[str, Any]]:
    """Return the ``modules`` list that enables this package's module.

    Args:
        config: the module's settings, ``MODULE_CONFIG`` by default.
        example: whether to enable the example module as well.
    """
    modules: list[dict[str, Any]] = [
        {
            "module": "synapse_bgupdates.BackgroundUpdatesModule",
            "config": dict(MODULE_CONFIG if config is None else config),
        }
    ]
    if example:
        modules.append({"module": "room_event_counts.RoomEventCountsModule"})
    return modules


@pytest.fixture
def module_homeserver(start_homeserver: StartHomeserver) -> HomeserverProcess:
    """A homeserver with this package's module and the example module."""
    return start_homeserver(modules=with_module())
