"""End-to-end tests of the Background Updates admin API as seen on the wire.

Each request goes to a real homeserver with the module and, where the tests
compare, to a homeserver without it. The contract is the one of Synapse
1.163.2, with the same status codes and errcodes, the same bodies on success,
and every other admin endpoint still served and still admin-only.

Homeservers that no test changes are shared by the whole file. The paused
ones are shared too, and each test that queues jobs on them empties the
queues when it ends.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import synapse
from conftest import StartHomeserver, with_module
from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)

from synapse_bgupdates.testing.client import HttpResponse
from synapse_bgupdates.testing.homeserver import (
    HomeserverProcess,
    Template,
    find_free_port,
)

BACKGROUND_UPDATES = "/_synapse/admin/v1/background_updates"
STATUS = f"{BACKGROUND_UPDATES}/status"
ENABLED = f"{BACKGROUND_UPDATES}/enabled"
START_JOB = f"{BACKGROUND_UPDATES}/start_job"
REGISTER = "/_synapse/admin/v1/register"

POPULATE_STATS = "populate_stats_process_rooms"
REGENERATE_DIRECTORY = "regenerate_directory"
EXAMPLE_UPDATE = "example_room_event_counts"
DIRECTORY_STEPS = (
    "populate_user_directory_createtables",
    "populate_user_directory_process_rooms",
    "populate_user_directory_process_users",
    "populate_user_directory_cleanup",
)
VALID_JOB_NAMES = (
    "event_resign",
    EXAMPLE_UPDATE,
    POPULATE_STATS,
    REGENERATE_DIRECTORY,
)
STATUS_ENTRY_KEYS = {
    "name",
    "total_item_count",
    "total_duration_ms",
    "average_items_per_ms",
}
NOT_ADMIN_MESSAGE = "You are not a server admin"

# On the shared homeservers each batch of the homeserver's own updates first
# sleeps for ten minutes, so a job started there stays in progress, before its
# first batch, until the homeservers stop at the end of the file. They also
# let guests in, to check that guests are rejected.
SHARED_CONFIG: dict[str, Any] = {
    "background_updates": {"sleep_enabled": True, "sleep_duration_ms": 600_000},
    "allow_guest_access": True,
}
WAIT_TIMEOUT_S = 30.0


class Credential(enum.Enum):
    """Who sends a request: which access token goes with it, if any."""

    ADMIN = "admin"
    USER = "user"
    MISSING = "missing"
    UNKNOWN = "unknown"
    # Only the shared homeservers have these two (see ``_add_principals``).
    GUEST = "guest"
    LOCKED_ADMIN = "locked-admin"


@dataclass(frozen=True)
class Server:
    """A running homeserver with a server admin and an ordinary user.

    ``guest_token`` and ``locked_admin_token`` are None unless the homeserver
    allows guests and has a locked admin.
    """

    process: HomeserverProcess
    admin_id: str
    admin_token: str
    user_id: str
    user_token: str
    guest_token: str | None = None
    locked_admin_token: str | None = None

    def token(self, credential: Credential) -> str | None:
        """Return the access token that ``credential`` sends.

        Raises:
            ValueError: this homeserver has no guest or no locked admin.
        """
        if credential is Credential.MISSING:
            return None
        tokens = {
            Credential.ADMIN: self.admin_token,
            Credential.USER: self.user_token,
            Credential.UNKNOWN: "syt_not_a_token_of_this_server",
            Credential.GUEST: self.guest_token,
            Credential.LOCKED_ADMIN: self.locked_admin_token,
        }
        token = tokens[credential]
        if token is None:
            raise ValueError(f"This homeserver has no {credential.value} token")
        return token

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        credential: Credential = Credential.ADMIN,
        raw_body: bytes | None = None,
    ) -> HttpResponse:
        """Send one request to the client listener."""
        return self.process.request(
            method, path, body, token=self.token(credential), raw_body=raw_body
        )


class TwoListenerHomeserver(HomeserverProcess):
    """A homeserver with a second HTTP listener that serves only federation.

    Synapse serves its admin API only on listeners with the ``client``
    resource, so the second listener shows what other listeners return.
    """

    def __init__(
        self, workdir: Path, *, listener_tag: str | None = None, **options: Any
    ) -> None:
        """Configure the homeserver without starting it.

        The other options are those of ``HomeserverProcess``.

        Args:
            listener_tag: A ``tag`` that both listeners get, as Synapse's
                ``listeners`` option allows. In Synapse 1.163.2 the tag names
                the site in access logs, request contexts and metrics.
        """
        super().__init__(workdir, **options)
        self.federation_port = find_free_port()
        self._listener_tag = listener_tag

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["listeners"].append(
            {
                "port": self.federation_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["federation"], "compress": False}],
            }
        )
        if self._listener_tag is not None:
            for listener in config["listeners"]:
                listener["tag"] = self._listener_tag
        return config


def _register_users(process: HomeserverProcess) -> Server:
    admin_id, admin_token = process.register_user("admin", admin=True)
    user_id, user_token = process.register_user("user")
    return Server(process, admin_id, admin_token, user_id, user_token)


def _add_principals(server: Server) -> Server:
    """Register a guest and an admin whose account is locked.

    The homeserver must allow guests (``SHARED_CONFIG``).
    """
    guest = server.send("POST", "/_matrix/client/v3/register?kind=guest", {})
    assert guest.status == 200, guest

    locked_id, locked_token = server.process.register_user("locked", admin=True)
    locked = server.send(
        "PUT", f"/_synapse/admin/v2/users/{locked_id}", {"locked": True}
    )
    assert locked.status == 200, locked

    return dataclasses.replace(
        server,
        guest_token=str(guest.json["access_token"]),
        locked_admin_token=locked_token,
    )


def _start_shared(
    cleanup: ExitStack,
    workdir: Path,
    template: Template,
    *,
    modules: Sequence[Mapping[str, Any]] = (),
    extra_config: Mapping[str, Any] | None = None,
    process_class: type[HomeserverProcess] = HomeserverProcess,
) -> Server:
    process = process_class(
        workdir, template=template, modules=modules, extra_config=extra_config
    )
    cleanup.callback(process.close)
    process.start()
    return _register_users(process)


def _pause(server: Server) -> None:
    response = server.send("POST", ENABLED, {"enabled": False})
    assert response.json == {"enabled": False}, response


def _wait_for_current_update(server: Server, description: str) -> None:
    """Wait until status lists an update in progress on the main database."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while "master" not in server.send("GET", STATUS).json["current_updates"]:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"Timed out after {WAIT_TIMEOUT_S:g} s waiting for an update in"
                f" progress on {description}"
            )
        time.sleep(0.1)


def _queued_names(server: Server) -> list[str]:
    rows = server.process.db_query(
        "SELECT update_name FROM background_updates ORDER BY update_name"
    )
    return [str(row[0]) for row in rows]


def _empty_queues(server: Server, *, module: bool) -> None:
    server.process.db_execute("DELETE FROM background_updates")
    if module:
        server.process.db_execute("DELETE FROM bgupdates_queue")


@pytest.fixture(scope="module")
def servers(
    homeserver_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Shared homeservers with and without the module, each with two listeners.

    Jobs started on them sleep before their first batch, as set in
    ``SHARED_CONFIG``.
    """
    workdir = tmp_path_factory.mktemp("wire-contract-shared")
    with ExitStack() as cleanup:
        module_server = _start_shared(
            cleanup,
            workdir / "module",
            homeserver_template,
            modules=with_module(),
            extra_config=SHARED_CONFIG,
            process_class=TwoListenerHomeserver,
        )
        vanilla_server = _start_shared(
            cleanup,
            workdir / "vanilla",
            homeserver_template,
            extra_config=SHARED_CONFIG,
            process_class=TwoListenerHomeserver,
        )
        yield _add_principals(module_server), _add_principals(vanilla_server)


@pytest.fixture
def module_server(servers: tuple[Server, Server]) -> Server:
    """The shared homeserver with the module and the example module."""
    return servers[0]


@pytest.fixture
def vanilla_server(servers: tuple[Server, Server]) -> Server:
    """The shared homeserver without modules."""
    return servers[1]


@pytest.fixture(scope="module")
def paused_servers(
    homeserver_template: Template, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Homeservers with and without the module, paused through the API."""
    workdir = tmp_path_factory.mktemp("wire-contract-paused")
    with ExitStack() as cleanup:
        module_server = _start_shared(
            cleanup, workdir / "module", homeserver_template, modules=with_module()
        )
        vanilla_server = _start_shared(
            cleanup, workdir / "vanilla", homeserver_template
        )
        _pause(module_server)
        _pause(vanilla_server)
        yield module_server, vanilla_server


@pytest.fixture
def paused_module(paused_servers: tuple[Server, Server]) -> Iterator[Server]:
    """The paused homeserver with the module, whose queues each test empties."""
    server = paused_servers[0]
    yield server
    _empty_queues(server, module=True)


@pytest.fixture
def paused_vanilla(paused_servers: tuple[Server, Server]) -> Iterator[Server]:
    """The paused homeserver without modules, whose queue each test empties."""
    server = paused_servers[1]
    yield server
    _empty_queues(server, module=False)


@pytest.fixture
def fresh_module(start_homeserver: StartHomeserver) -> Server:
    """A homeserver with the module of its own, for tests that change its state."""
    return _register_users(start_homeserver(modules=with_module()))


# Requests that every endpoint gets in the authentication tests. The bodies
# are valid, so only the access token decides the response, and they change
# nothing if the check were ever skipped.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", STATUS, None),
    ("GET", ENABLED, None),
    ("POST", ENABLED, {"enabled": True}),
    ("POST", START_JOB, {"job_name": POPULATE_STATS}),
]
ENDPOINT_IDS = ["get-status", "get-enabled", "post-enabled", "post-start_job"]

# Bodies that are not JSON, or JSON but not an object, with Synapse's errcode.
BAD_BODIES: list[tuple[bytes, str]] = [
    (b"{not json", "M_NOT_JSON"),
    (b"", "M_NOT_JSON"),
    (b"\xff\xfe", "M_NOT_JSON"),
    (b"[]", "M_BAD_JSON"),
    (b'"enabled"', "M_BAD_JSON"),
    (b"1", "M_BAD_JSON"),
    (b"null", "M_BAD_JSON"),
]
BAD_BODY_IDS = ["garbage", "empty", "not-utf8", "array", "string", "number", "null"]


@dataclass(frozen=True)
class Case:
    """A request for which both homeservers must return the same status."""

    id: str
    method: str
    path: str
    body: Any = None
    raw_body: bytes | None = None
    credential: Credential = Credential.ADMIN


def _auth_cases() -> list[Case]:
    cases = []
    for (method, path, body), endpoint in zip(ENDPOINTS, ENDPOINT_IDS, strict=True):
        for credential in (
            Credential.MISSING,
            Credential.UNKNOWN,
            Credential.USER,
            Credential.GUEST,
            Credential.LOCKED_ADMIN,
        ):
            cases.append(
                Case(
                    f"{endpoint}-{credential.value}",
                    method,
                    path,
                    body,
                    None,
                    credential,
                )
            )
    return cases


def _bad_body_cases() -> list[Case]:
    cases = []
    for path in (ENABLED, START_JOB):
        endpoint = path.rsplit("/", 1)[1]
        for (raw_body, _), body_id in zip(BAD_BODIES, BAD_BODY_IDS, strict=True):
            cases.append(Case(f"{endpoint}-{body_id}", "POST", path, raw_body=raw_body))
    return cases


# Requests to which both homeservers give the same status and errcode.
SAME_ERRCODE_CASES: list[Case] = [
    *_auth_cases(),
    *_bad_body_cases(),
    # The token is checked before the body is read.
    Case(
        "no-token-bad-body",
        "POST",
        START_JOB,
        raw_body=b"{",
        credential=Credential.MISSING,
    ),
    Case("user-bad-body", "POST", ENABLED, raw_body=b"{", credential=Credential.USER),
    Case("missing-job_name", "POST", START_JOB, {}),
    Case("put-status", "PUT", STATUS, {}),
    Case("delete-status", "DELETE", STATUS),
    Case("post-status", "POST", STATUS, {}),
    Case("delete-enabled", "DELETE", ENABLED),
    Case("get-start_job", "GET", START_JOB),
    Case("put-start_job", "PUT", START_JOB, {}),
    Case("unknown-path", "GET", f"{BACKGROUND_UPDATES}/unknown"),
    Case("unknown-post-path", "POST", f"{BACKGROUND_UPDATES}/run", {}),
    Case("prefix-only", "GET", f"{BACKGROUND_UPDATES}/"),
    Case("no-trailing-slash", "GET", BACKGROUND_UPDATES),
    Case("trailing-slash", "GET", f"{STATUS}/"),
    Case("below-status", "GET", f"{STATUS}/master"),
    Case("head-status", "HEAD", STATUS),
    Case("head-enabled-user", "HEAD", ENABLED, credential=Credential.USER),
]

# Requests whose responses must carry the same headers on both homeservers.
HEADER_CASES: list[Case] = [
    Case("get-status", "GET", STATUS),
    Case("get-enabled", "GET", ENABLED),
    Case("no-token", "GET", STATUS, credential=Credential.MISSING),
    Case("not-admin", "POST", START_JOB, {}, credential=Credential.USER),
    Case("bad-body", "POST", ENABLED, raw_body=b"{"),
    Case("missing-job_name", "POST", START_JOB, {}),
    Case("unknown-job_name", "POST", START_JOB, {"job_name": "no_such_job"}),
    Case("wrong-method", "PUT", STATUS),
    Case("unknown-path", "GET", f"{BACKGROUND_UPDATES}/unknown"),
    Case("options", "OPTIONS", STATUS, credential=Credential.MISSING),
]

# Requests that both homeservers reject with 400. Synapse gives M_UNKNOWN and
# a short message, the module M_INVALID_PARAM and a message with the value.
INVALID_PARAM_CASES: list[Case] = [
    Case("enabled-string", "POST", ENABLED, {"enabled": "no"}),
    Case("enabled-zero", "POST", ENABLED, {"enabled": 0}),
    Case("enabled-null", "POST", ENABLED, {"enabled": None}),
    Case("enabled-array", "POST", ENABLED, {"enabled": []}),
    Case("job_name-unknown", "POST", START_JOB, {"job_name": "no_such_job"}),
    Case("job_name-int", "POST", START_JOB, {"job_name": 1}),
    Case("job_name-null", "POST", START_JOB, {"job_name": None}),
    Case("job_name-array", "POST", START_JOB, {"job_name": [POPULATE_STATS]}),
    Case(
        "before_ts-string",
        "POST",
        START_JOB,
        {"job_name": "event_resign", "before_ts": "x"},
    ),
    Case("old_key-int", "POST", START_JOB, {"job_name": "event_resign", "old_key": 5}),
]


def _send_case(server: Server, case: Case) -> HttpResponse:
    return server.send(
        case.method,
        case.path,
        case.body,
        credential=case.credential,
        raw_body=case.raw_body,
    )


def _errcode(response: HttpResponse) -> str | None:
    if isinstance(response.json, dict):
        errcode = response.json.get("errcode")
        return None if errcode is None else str(errcode)
    return None


def _message(response: HttpResponse) -> str:
    return str(response.json.get("error")) if isinstance(response.json, dict) else ""


def _raw_request(
    port: int, method: str, path: str, token: str | None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send a request to any listener and return status, headers and body.

    Header names are lower case, and ``date`` and ``server`` are left out.
    """
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    received = {
        name.lower(): value
        for name, value in response.getheaders()
        if name.lower() not in {"date", "server"}
    }
    return response.status, received, content


class TestStatus:
    def test_status_admin_shape(self, module_server: Server) -> None:
        response = module_server.send("GET", STATUS)

        assert response.status == 200
        assert set(response.json) == {"enabled", "current_updates", "module_updates"}
        assert isinstance(response.json["enabled"], bool)
        assert isinstance(response.json["current_updates"], dict)
        assert isinstance(response.json["module_updates"], list)

    def test_status_homeserver_entry(
        self, module_server: Server, vanilla_server: Server
    ) -> None:
        # The job sleeps before its first batch (SHARED_CONFIG), so
        # each homeserver reports it in progress with nothing counted yet.
        entries = {}
        for name, server in (("module", module_server), ("vanilla", vanilla_server)):
            started = server.send("POST", START_JOB, {"job_name": POPULATE_STATS})
            assert started.status == 200, (name, started)
            _wait_for_current_update(server, f"the {name} homeserver")
            entries[name] = server.send("GET", STATUS).json["current_updates"]

        assert set(entries["module"]) == {"master"}
        assert set(entries["module"]["master"]) == STATUS_ENTRY_KEYS
        assert entries["module"]["master"]["name"] == POPULATE_STATS
        assert entries["module"]["master"]["total_item_count"] == 0
        assert entries["module"]["master"]["average_items_per_ms"] is None
        assert entries["module"] == entries["vanilla"]

    def test_status_module_paused(self, paused_module: Server) -> None:
        # As in Synapse, an update that has not started its first batch is
        # not in progress: while paused it is only listed in the queue.
        started = paused_module.send("POST", START_JOB, {"job_name": EXAMPLE_UPDATE})
        assert started.status == 200

        response = paused_module.send("GET", STATUS)
        queued = response.json["module_updates"]

        assert response.json["current_updates"] == {}
        assert [update["name"] for update in queued] == [EXAMPLE_UPDATE]
        assert queued[0]["state"] == "queued"


class TestEnabled:
    def test_enabled_get_initial(self, module_server: Server) -> None:
        response = module_server.send("GET", ENABLED)

        assert response.status == 200
        assert response.json == {"enabled": True}

    @pytest.mark.parametrize("value", ["no", "true", 0, 1, None, [], {}], ids=repr)
    def test_enabled_post_non_boolean(self, module_server: Server, value: Any) -> None:
        response = module_server.send("POST", ENABLED, {"enabled": value})

        assert response.status == 400
        assert response.json["errcode"] == "M_INVALID_PARAM"
        assert "'enabled'" in response.json["error"]
        assert module_server.send("GET", ENABLED).json == {"enabled": True}

    @pytest.mark.parametrize(("raw_body", "errcode"), BAD_BODIES, ids=BAD_BODY_IDS)
    def test_enabled_post_bad_body(
        self, module_server: Server, raw_body: bytes, errcode: str
    ) -> None:
        response = module_server.send("POST", ENABLED, raw_body=raw_body)

        assert response.status == 400
        assert response.json["errcode"] == errcode

    def test_enabled_round_trip(self, fresh_module: Server) -> None:
        paused = fresh_module.send("POST", ENABLED, {"enabled": False})
        enabled_while_paused = fresh_module.send("GET", ENABLED)
        status_while_paused = fresh_module.send("GET", STATUS)
        started = fresh_module.send("POST", START_JOB, {"job_name": POPULATE_STATS})
        # Unpaused, the homeserver would start this job at once, because the
        # harness disables Synapse's sleep between batches.
        time.sleep(1.0)
        queued_while_paused = _queued_names(fresh_module)

        assert paused.status == 200
        assert paused.json == {"enabled": False}
        assert enabled_while_paused.json == {"enabled": False}
        assert status_while_paused.json["enabled"] is False
        assert started.status == 200
        assert queued_while_paused == [POPULATE_STATS]

        # A body without the key resumes.
        resumed = fresh_module.send("POST", ENABLED, {})
        enabled_after = fresh_module.send("GET", ENABLED)
        status_after = fresh_module.send("GET", STATUS)

        assert resumed.status == 200
        assert resumed.json == {"enabled": True}
        assert enabled_after.json == {"enabled": True}
        assert status_after.json["enabled"] is True
        fresh_module.process.wait_for_background_updates(WAIT_TIMEOUT_S)

    def test_enabled_pause_twice(self, paused_module: Server) -> None:
        # Pausing a paused homeserver is accepted and changes nothing.
        response = paused_module.send("POST", ENABLED, {"enabled": False})

        assert response.status == 200
        assert response.json == {"enabled": False}
        assert paused_module.send("GET", ENABLED).json == {"enabled": False}
        assert paused_module.send("GET", STATUS).json["enabled"] is False


class TestStartJob:
    def test_start_job_runs(self, fresh_module: Server) -> None:
        response = fresh_module.send("POST", START_JOB, {"job_name": POPULATE_STATS})
        # The row is in the queue or the job has already run to the end.
        fresh_module.process.wait_for_background_updates(WAIT_TIMEOUT_S)
        log = fresh_module.process.files.log.read_text(encoding="utf-8")

        assert response.status == 200
        assert response.json == {}
        assert f"background update '{POPULATE_STATS}'" in log

    def test_start_job_paused_row(self, paused_module: Server) -> None:
        response = paused_module.send("POST", START_JOB, {"job_name": POPULATE_STATS})

        assert response.status == 200
        assert response.json == {}
        assert _queued_names(paused_module) == [POPULATE_STATS]

    def test_start_job_directory_chain(self, paused_module: Server) -> None:
        response = paused_module.send(
            "POST", START_JOB, {"job_name": REGENERATE_DIRECTORY}
        )
        rows = paused_module.process.db_query(
            "SELECT update_name, progress_json, depends_on FROM background_updates"
        )
        depends_on = {str(name): dependency for name, _, dependency in rows}
        progress = {str(name): str(progress) for name, progress, _ in rows}

        assert response.status == 200
        assert response.json == {}
        assert sorted(depends_on) == sorted(DIRECTORY_STEPS)
        assert depends_on[DIRECTORY_STEPS[0]] == ""
        assert depends_on[DIRECTORY_STEPS[1]] == DIRECTORY_STEPS[0]
        assert depends_on[DIRECTORY_STEPS[2]] == DIRECTORY_STEPS[1]
        assert depends_on[DIRECTORY_STEPS[3]] == DIRECTORY_STEPS[2]
        assert set(progress.values()) == {"{}"}

    @pytest.mark.parametrize("job_name", [POPULATE_STATS, REGENERATE_DIRECTORY])
    def test_start_job_queued_twice(self, paused_module: Server, job_name: str) -> None:
        first = paused_module.send("POST", START_JOB, {"job_name": job_name})
        queued_before = _queued_names(paused_module)
        second = paused_module.send("POST", START_JOB, {"job_name": job_name})

        assert first.status == 200
        assert second.status == 400
        assert second.json["errcode"] == "M_UNKNOWN"
        assert (
            second.json["error"]
            == f"Job {job_name} is already in queue of background updates."
        )
        assert _queued_names(paused_module) == queued_before

    @pytest.mark.parametrize("step", DIRECTORY_STEPS)
    def test_start_job_one_step_queued(self, paused_module: Server, step: str) -> None:
        paused_module.process.db_execute(
            "INSERT INTO background_updates (update_name, progress_json)"
            " VALUES (?, '{}')",
            [step],
        )

        response = paused_module.send(
            "POST", START_JOB, {"job_name": REGENERATE_DIRECTORY}
        )

        assert response.status == 400
        assert response.json["errcode"] == "M_UNKNOWN"
        assert (
            response.json["error"]
            == f"Job {REGENERATE_DIRECTORY} is already in queue of background updates."
        )
        assert _queued_names(paused_module) == [step]

    def test_start_job_module_twice(self, paused_module: Server) -> None:
        first = paused_module.send("POST", START_JOB, {"job_name": EXAMPLE_UPDATE})
        second = paused_module.send("POST", START_JOB, {"job_name": EXAMPLE_UPDATE})
        rows = paused_module.process.db_query("SELECT update_name FROM bgupdates_queue")

        assert first.status == 200
        assert first.json == {}
        assert second.status == 400
        assert second.json["errcode"] == "M_UNKNOWN"
        assert (
            second.json["error"]
            == f"Job {EXAMPLE_UPDATE} is already in queue of background updates."
        )
        assert rows == [(EXAMPLE_UPDATE,)]

    @pytest.mark.parametrize("valid_name", VALID_JOB_NAMES)
    def test_start_job_unknown_name(
        self, module_server: Server, valid_name: str
    ) -> None:
        response = module_server.send("POST", START_JOB, {"job_name": "no_such_job"})

        assert response.status == 400
        assert response.json["errcode"] == "M_INVALID_PARAM"
        assert "no_such_job" in response.json["error"]
        assert valid_name in response.json["error"]

    @pytest.mark.parametrize(
        "job_name", [1, None, True, [], {}, ["populate_stats_process_rooms"]], ids=repr
    )
    def test_start_job_non_string(self, module_server: Server, job_name: Any) -> None:
        response = module_server.send("POST", START_JOB, {"job_name": job_name})

        assert response.status == 400
        assert response.json["errcode"] == "M_INVALID_PARAM"
        assert "job_name" in response.json["error"]

    @pytest.mark.parametrize(
        ("path", "raw_body", "field"),
        [
            (START_JOB, b'{"job_name": "x\\ud800"}', "job_name"),
            (ENABLED, b'{"enabled": "\\udfff"}', "enabled"),
        ],
        ids=["job_name", "enabled"],
    )
    def test_lone_surrogate_answered(
        self, module_server: Server, path: str, raw_body: bytes, field: str
    ) -> None:
        response = module_server.process.request(
            "POST", path, token=module_server.admin_token, raw_body=raw_body
        )

        assert response.status == 400
        assert response.json["errcode"] == "M_INVALID_PARAM"
        assert field in response.json["error"]

    def test_start_job_missing_name(self, module_server: Server) -> None:
        response = module_server.send("POST", START_JOB, {"before_ts": 1})

        assert response.status == 400
        assert response.json["errcode"] == "M_MISSING_PARAM"
        assert "job_name" in response.json["error"]

    @pytest.mark.parametrize(
        ("field", "value"),
        [("before_ts", "x"), ("before_ts", True), ("before_ts", 1.5), ("old_key", 5)],
        ids=["before_ts-string", "before_ts-bool", "before_ts-float", "old_key-int"],
    )
    def test_start_job_resign_params(
        self, module_server: Server, field: str, value: Any
    ) -> None:
        response = module_server.send(
            "POST", START_JOB, {"job_name": "event_resign", field: value}
        )

        assert response.status == 400
        assert response.json["errcode"] == "M_INVALID_PARAM"
        assert f"'{field}'" in response.json["error"]
        assert "event_resign" not in _queued_names(module_server)

    @pytest.mark.parametrize(("raw_body", "errcode"), BAD_BODIES, ids=BAD_BODY_IDS)
    def test_start_job_bad_body(
        self, module_server: Server, raw_body: bytes, errcode: str
    ) -> None:
        response = module_server.send("POST", START_JOB, raw_body=raw_body)

        assert response.status == 400
        assert response.json["errcode"] == errcode


class TestAuth:
    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
    def test_auth_missing_token(
        self, module_server: Server, method: str, path: str, body: Any
    ) -> None:
        response = module_server.send(method, path, body, credential=Credential.MISSING)

        assert response.status == 401
        assert response.json["errcode"] == "M_MISSING_TOKEN"

    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
    def test_auth_unknown_token(
        self, module_server: Server, method: str, path: str, body: Any
    ) -> None:
        response = module_server.send(method, path, body, credential=Credential.UNKNOWN)

        assert response.status == 401
        assert response.json["errcode"] == "M_UNKNOWN_TOKEN"

    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
    def test_auth_not_admin(
        self, module_server: Server, method: str, path: str, body: Any
    ) -> None:
        response = module_server.send(method, path, body, credential=Credential.USER)

        assert response.status == 403
        assert response.json["errcode"] == "M_FORBIDDEN"
        assert response.json["error"] == NOT_ADMIN_MESSAGE

    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
    def test_auth_guest(
        self, module_server: Server, method: str, path: str, body: Any
    ) -> None:
        response = module_server.send(method, path, body, credential=Credential.GUEST)

        assert response.status == 403
        assert response.json["errcode"] == "M_GUEST_ACCESS_FORBIDDEN"

    @pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
    def test_auth_locked_admin(
        self, module_server: Server, method: str, path: str, body: Any
    ) -> None:
        response = module_server.send(
            method, path, body, credential=Credential.LOCKED_ADMIN
        )

        assert response.status == 401
        assert response.json["errcode"] == "M_USER_LOCKED"

    def test_auth_token_in_query(self, module_server: Server) -> None:
        response = module_server.send(
            "GET",
            f"{ENABLED}?access_token={module_server.admin_token}",
            credential=Credential.MISSING,
        )

        assert response.status == 200
        assert response.json == {"enabled": True}


class TestRouting:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("PUT", STATUS),
            ("DELETE", STATUS),
            ("POST", STATUS),
            ("PUT", ENABLED),
            ("DELETE", ENABLED),
            ("GET", START_JOB),
            ("DELETE", START_JOB),
        ],
        ids=lambda value: value.rsplit("/", 1)[-1],
    )
    def test_routing_wrong_method(
        self, module_server: Server, method: str, path: str
    ) -> None:
        response = module_server.send(method, path)

        assert response.status == 405
        assert response.json["errcode"] == "M_UNRECOGNIZED"

    @pytest.mark.parametrize(
        "path",
        [
            f"{BACKGROUND_UPDATES}/unknown",
            f"{BACKGROUND_UPDATES}/",
            f"{STATUS}/",
            f"{STATUS}/master",
            "/_synapse/admin/v1/background_updates_status",
        ],
    )
    def test_routing_unknown_path(self, module_server: Server, path: str) -> None:
        response = module_server.send("GET", path)

        assert response.status == 404
        assert response.json["errcode"] == "M_UNRECOGNIZED"

    @pytest.mark.parametrize(
        "path", [STATUS, "/_synapse/admin/v1/server_version"], ids=["status", "version"]
    )
    def test_routing_other_listener(self, module_server: Server, path: str) -> None:
        process = module_server.process
        assert isinstance(process, TwoListenerHomeserver)

        status, _, _ = _raw_request(
            process.federation_port, "GET", path, module_server.admin_token
        )

        assert status == 404

    def test_routing_shared_tag(
        self, homeserver_template: Template, tmp_path: Path
    ) -> None:
        answers = {}
        for name, modules in (("vanilla", []), ("module", with_module())):
            process = TwoListenerHomeserver(
                tmp_path / name,
                template=homeserver_template,
                modules=modules,
                listener_tag="main",
            )
            with process:
                answers[name] = _raw_request(
                    process.federation_port,
                    "GET",
                    "/_synapse/admin/v1/server_version",
                    None,
                )[0]

        assert answers["vanilla"] == 404
        assert answers["module"] == 404


class TestOtherAdminEndpoints:
    def test_users_as_admin(self, module_server: Server) -> None:
        response = module_server.send(
            "GET", f"/_synapse/admin/v2/users/{module_server.user_id}"
        )

        assert response.status == 200
        assert response.json["name"] == module_server.user_id
        assert response.json["admin"] is False

    def test_users_as_user(self, module_server: Server) -> None:
        response = module_server.send(
            "GET",
            f"/_synapse/admin/v2/users/{module_server.admin_id}",
            credential=Credential.USER,
        )

        assert response.status == 403
        assert response.json["errcode"] == "M_FORBIDDEN"
        assert response.json["error"] == NOT_ADMIN_MESSAGE

    def test_users_without_token(self, module_server: Server) -> None:
        response = module_server.send(
            "GET",
            f"/_synapse/admin/v2/users/{module_server.admin_id}",
            credential=Credential.MISSING,
        )

        assert response.status == 401
        assert response.json["errcode"] == "M_MISSING_TOKEN"

    def test_rooms_as_admin(self, module_server: Server) -> None:
        response = module_server.send("GET", "/_synapse/admin/v1/rooms")

        assert response.status == 200
        assert isinstance(response.json["rooms"], list)
        assert isinstance(response.json["total_rooms"], int)

    def test_rooms_as_user(self, module_server: Server) -> None:
        response = module_server.send(
            "GET", "/_synapse/admin/v1/rooms", credential=Credential.USER
        )

        assert response.status == 403
        assert response.json["errcode"] == "M_FORBIDDEN"

    def test_server_version_anonymous(self, module_server: Server) -> None:
        # Synapse 1.163.2 serves server_version without checking any token.
        response = module_server.send(
            "GET", "/_synapse/admin/v1/server_version", credential=Credential.MISSING
        )

        assert response.status == 200
        assert response.json == {"server_version": synapse.__version__}

    def test_register_new_user(self, module_server: Server) -> None:
        user_id, token = module_server.process.register_user("registered")

        whoami = module_server.process.request(
            "GET", "/_matrix/client/v3/account/whoami", token=token
        )

        assert whoami.status == 200
        assert whoami.json["user_id"] == user_id

    def test_register_nonce_reuse(self, module_server: Server) -> None:
        # The nonces live in the servlet, so a nonce must be single use in
        # the copy of the admin resource that the module serves.
        nonce = module_server.send("GET", REGISTER).json["nonce"]
        body = _registration_body(module_server, nonce, "reuse")

        first = module_server.send("POST", REGISTER, body)
        second = module_server.send("POST", REGISTER, body)

        assert first.status == 200
        assert second.status == 400
        assert "nonce" in second.json["error"]

    def test_register_wrong_mac(self, module_server: Server) -> None:
        nonce = module_server.send("GET", REGISTER).json["nonce"]
        body = {**_registration_body(module_server, nonce, "wrongmac"), "mac": "00"}

        response = module_server.send("POST", REGISTER, body)

        # Synapse 1.163.2 sends no errcode of its own here, hence M_UNKNOWN.
        assert response.status == 403
        assert response.json["errcode"] == "M_UNKNOWN"
        assert response.json["error"] == "HMAC incorrect"


def _registration_body(server: Server, nonce: str, localpart: str) -> dict[str, Any]:
    password = "test-password"
    mac = hmac.new(
        server.process.registration_shared_secret.encode("utf-8"),
        b"\x00".join(
            [nonce.encode(), localpart.encode(), password.encode(), b"notadmin"]
        ),
        hashlib.sha1,
    ).hexdigest()
    return {
        "nonce": nonce,
        "username": localpart,
        "password": password,
        "admin": False,
        "mac": mac,
    }


class TestVanillaComparison:
    """The same requests to a homeserver with the module and one without."""

    @pytest.mark.parametrize("case", SAME_ERRCODE_CASES, ids=lambda case: case.id)
    def test_vanilla_same_errcode(
        self, module_server: Server, vanilla_server: Server, case: Case
    ) -> None:
        with_module_response = _send_case(module_server, case)
        vanilla_response = _send_case(vanilla_server, case)

        assert with_module_response.status == vanilla_response.status
        assert _errcode(with_module_response) == _errcode(vanilla_response)

    @pytest.mark.parametrize("case", INVALID_PARAM_CASES, ids=lambda case: case.id)
    def test_vanilla_invalid_param(
        self, module_server: Server, vanilla_server: Server, case: Case
    ) -> None:
        # Synapse 1.163.2 raises these without an errcode, so they arrive as
        # M_UNKNOWN. The module sends M_INVALID_PARAM, as its README documents.
        with_module_response = _send_case(module_server, case)
        vanilla_response = _send_case(vanilla_server, case)

        assert with_module_response.status == 400
        assert vanilla_response.status == 400
        assert _errcode(with_module_response) == "M_INVALID_PARAM"
        assert _errcode(vanilla_response) == "M_UNKNOWN"

    def test_vanilla_admin_bodies(
        self, module_server: Server, vanilla_server: Server
    ) -> None:
        with_module_enabled = module_server.send("GET", ENABLED)
        vanilla_enabled = vanilla_server.send("GET", ENABLED)
        with_module_status = module_server.send("GET", STATUS).json
        vanilla_status = vanilla_server.send("GET", STATUS).json

        assert with_module_enabled == vanilla_enabled
        assert with_module_status.pop("module_updates") == []
        assert with_module_status == vanilla_status

    @pytest.mark.parametrize(
        "setup",
        ["populate-twice", "directory-twice", "directory-step-queued"],
    )
    def test_vanilla_already_queued(
        self, paused_module: Server, paused_vanilla: Server, setup: str
    ) -> None:
        responses = []
        queues = []
        for server in (paused_module, paused_vanilla):
            if setup == "populate-twice":
                job_name = POPULATE_STATS
                server.send("POST", START_JOB, {"job_name": job_name})
            elif setup == "directory-twice":
                job_name = REGENERATE_DIRECTORY
                server.send("POST", START_JOB, {"job_name": job_name})
            else:
                job_name = REGENERATE_DIRECTORY
                server.process.db_execute(
                    "INSERT INTO background_updates (update_name, progress_json)"
                    " VALUES (?, '{}')",
                    [DIRECTORY_STEPS[2]],
                )
            responses.append(server.send("POST", START_JOB, {"job_name": job_name}))
            queues.append(_queued_names(server))
        with_module_response, vanilla_response = responses

        assert with_module_response.status == 400
        assert vanilla_response.status == 400
        assert _errcode(with_module_response) == _errcode(vanilla_response)
        assert _message(with_module_response) == _message(vanilla_response)
        assert queues[0] == queues[1]

    def test_vanilla_directory_rows(
        self, paused_module: Server, paused_vanilla: Server
    ) -> None:
        rows = []
        for server in (paused_module, paused_vanilla):
            server.send("POST", START_JOB, {"job_name": REGENERATE_DIRECTORY})
            rows.append(
                sorted(
                    server.process.db_query(
                        "SELECT update_name, progress_json, depends_on"
                        " FROM background_updates"
                    )
                )
            )
        with_module_rows, vanilla_rows = rows

        assert with_module_rows == vanilla_rows

    def test_vanilla_resign_bool_timestamp(
        self, paused_module: Server, paused_vanilla: Server
    ) -> None:
        # Synapse 1.163.2 takes a JSON boolean as an integer and queues
        # event_resign with "before_ts": true. The module rejects it.
        body = {"job_name": "event_resign", "before_ts": True}

        with_module_response = paused_module.send("POST", START_JOB, body)
        vanilla_response = paused_vanilla.send("POST", START_JOB, body)

        assert with_module_response.status == 400
        assert vanilla_response.status == 200
        assert _queued_names(paused_module) == []
        assert _queued_names(paused_vanilla) == ["event_resign"]

    @pytest.mark.parametrize(
        "path", [STATUS, "/_synapse/admin/v1/server_version"], ids=["status", "version"]
    )
    def test_vanilla_other_listener(
        self, module_server: Server, vanilla_server: Server, path: str
    ) -> None:
        # Both return 404 on a listener without the client resource. Synapse
        # sends Twisted's HTML page, the module a JSON M_UNRECOGNIZED error.
        answers = []
        for server in (module_server, vanilla_server):
            process = server.process
            assert isinstance(process, TwoListenerHomeserver)
            answers.append(
                _raw_request(process.federation_port, "GET", path, server.admin_token)
            )
        (
            (module_status, module_headers, module_body),
            (vanilla_status, vanilla_headers, _),
        ) = answers

        assert module_status == 404
        assert vanilla_status == 404
        assert module_headers["content-type"] == "application/json"
        assert b"M_UNRECOGNIZED" in module_body
        assert vanilla_headers["content-type"].startswith("text/html")

    @pytest.mark.parametrize("case", HEADER_CASES, ids=lambda case: case.id)
    def test_vanilla_same_headers(
        self, module_server: Server, vanilla_server: Server, case: Case
    ) -> None:
        # Browser clients such as synapse-admin need the CORS headers on
        # every response, errors included.
        answers = []
        for server in (module_server, vanilla_server):
            body = case.raw_body
            if case.body is not None:
                body = json.dumps(case.body).encode("utf-8")
            answers.append(
                _raw_request(
                    server.process.port,
                    case.method,
                    case.path,
                    server.token(case.credential),
                    body,
                )
            )
        (module_status, module_headers, _), (vanilla_status, vanilla_headers, _) = (
            answers
        )

        assert module_status == vanilla_status
        assert module_headers == vanilla_headers
        assert module_headers["access-control-allow-origin"] == "*"

    def test_vanilla_resign_rows(
        self, paused_module: Server, paused_vanilla: Server
    ) -> None:
        verify_key = get_verify_key(generate_signing_key("old"))
        old_key = f"ed25519:old {encode_verify_key_base64(verify_key)}"
        body = {"job_name": "event_resign", "old_key": old_key, "before_ts": 5}
        rows = []
        for server in (paused_module, paused_vanilla):
            response = server.send("POST", START_JOB, body)
            assert response.status == 200, response
            rows.append(
                server.process.db_query(
                    "SELECT update_name, progress_json FROM background_updates"
                )
            )
        with_module_rows, vanilla_rows = rows

        assert with_module_rows == vanilla_rows
        assert json.loads(with_module_rows[0][1]) == {
            "old_key": old_key,
            "before_ts": 5,
        }

    def test_vanilla_resign_malformed_key(
        self, paused_module: Server, paused_vanilla: Server
    ) -> None:
        # Synapse 1.163.2 queues a key it cannot parse, and its updater then
        # fails on every batch. The module rejects the key.
        body = {"job_name": "event_resign", "old_key": "ed25519:old"}

        module_response = paused_module.send("POST", START_JOB, body)
        vanilla_response = paused_vanilla.send("POST", START_JOB, body)

        assert module_response.status == 400
        assert module_response.json["errcode"] == "M_INVALID_PARAM"
        assert vanilla_response.status == 200
