"""Smoke tests of the homeserver launcher, on Synapse with no modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import synapse

from synapse_bgupdates.testing.databases import (
    TEST_DATABASE_ENV_VAR,
    DatabaseKind,
    database_kind_from_env,
    to_pyformat,
)
from synapse_bgupdates.testing.homeserver import (
    HomeserverProcess,
    HomeserverStartError,
    Template,
)
from synapse_bgupdates.testing.homeserver_config import merge_config

WHOAMI = "/_matrix/client/v3/account/whoami"


def test_admin_api_rejects_non_admin(homeserver: HomeserverProcess) -> None:
    admin_id, admin_token = homeserver.register_user("admin", admin=True)
    _, user_token = homeserver.register_user("user")
    path = f"/_synapse/admin/v2/users/{admin_id}"

    as_admin = homeserver.request("GET", path, token=admin_token)
    as_user = homeserver.request("GET", path, token=user_token)

    assert as_admin.status == 200
    assert as_admin.json["admin"] is True
    assert as_user.status == 403
    assert as_user.json["errcode"] == "M_FORBIDDEN"


def test_server_version_needs_no_admin(homeserver: HomeserverProcess) -> None:
    # Synapse 1.163 serves server_version without any authentication.
    _, user_token = homeserver.register_user("user")
    path = "/_synapse/admin/v1/server_version"

    as_user = homeserver.request("GET", path, token=user_token)
    anonymous = homeserver.request("GET", path)

    assert as_user.status == 200
    assert as_user.json == {"server_version": synapse.__version__}
    assert anonymous.status == 200


def test_template_start_has_no_updates(homeserver: HomeserverProcess) -> None:
    remaining = homeserver.db_query("SELECT update_name FROM background_updates")

    assert remaining == []


def test_template_database_is_copied(
    homeserver: HomeserverProcess, homeserver_template: Template
) -> None:
    homeserver.register_user("only_in_copy")

    assert homeserver.database != homeserver_template.database
    assert (
        homeserver_template.database.query(
            "SELECT name FROM users WHERE name = ?", ["@only_in_copy:test.local"]
        )
        == []
    )


def test_room_helpers_store_message(homeserver: HomeserverProcess) -> None:
    _, alice_token = homeserver.register_user("alice")
    bob_id, bob_token = homeserver.register_user("bob")
    room_id = homeserver.create_room(alice_token, preset="public_chat")

    assert homeserver.join_room(bob_token, room_id) == room_id
    event_id = homeserver.send_message(bob_token, room_id, "hello")

    rows = homeserver.db_query(
        "SELECT sender, type FROM events WHERE event_id = ?", [event_id]
    )
    assert rows == [(bob_id, "m.room.message")]


def test_db_execute_commits(homeserver: HomeserverProcess) -> None:
    user_id, _ = homeserver.register_user("carol")

    homeserver.db_execute("UPDATE users SET admin = ? WHERE name = ?", [1, user_id])

    rows = homeserver.db_query("SELECT admin FROM users WHERE name = ?", [user_id])
    assert rows == [(1,)]


def test_invalid_json_body_rejected(homeserver: HomeserverProcess) -> None:
    _, token = homeserver.register_user("dave")

    response = homeserver.request(
        "POST", "/_matrix/client/v3/createRoom", raw_body=b"{not json", token=token
    )

    assert response.status == 400
    assert response.json["errcode"] == "M_NOT_JSON"


def test_restart_keeps_users(homeserver: HomeserverProcess) -> None:
    user_id, token = homeserver.register_user("erin")
    first_port = homeserver.port

    homeserver.restart()
    response = homeserver.request("GET", WHOAMI, token=token)

    assert homeserver.port == first_port
    assert response.status == 200
    assert response.json["user_id"] == user_id


def test_kill_then_start(homeserver: HomeserverProcess) -> None:
    _, token = homeserver.register_user("frank")

    homeserver.kill()
    assert not homeserver.running
    with pytest.raises(OSError):
        homeserver.request("GET", WHOAMI, token=token)

    homeserver.start()
    assert homeserver.request("GET", WHOAMI, token=token).status == 200


def test_failed_start_drops_database(
    homeserver_template: Template, tmp_path: Path
) -> None:
    homeserver = HomeserverProcess(
        tmp_path / "broken",
        template=homeserver_template,
        modules=[{"module": "no_such_package.NoSuchModule", "config": {}}],
    )

    with pytest.raises(HomeserverStartError, match="no_such_package"), homeserver:
        pass

    assert not homeserver.running
    assert not homeserver.database.exists()


def test_start_homeserver_merges_config(
    start_homeserver: Callable[..., HomeserverProcess],
) -> None:
    homeserver = start_homeserver(
        extra_config={"background_updates": {"default_batch_size": 50}}
    )

    config = homeserver.config()

    assert config["background_updates"] == {
        "sleep_enabled": False,
        "default_batch_size": 50,
    }
    assert config["server_name"] == "test.local"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", DatabaseKind.SQLITE),
        ("sqlite", DatabaseKind.SQLITE),
        ("postgres", DatabaseKind.POSTGRES),
        (" Postgres ", DatabaseKind.POSTGRES),
    ],
)
def test_database_kind_from_env(value: str, expected: DatabaseKind) -> None:
    assert database_kind_from_env({TEST_DATABASE_ENV_VAR: value}) is expected


def test_database_kind_from_env_invalid() -> None:
    with pytest.raises(ValueError, match="mysql"):
        database_kind_from_env({TEST_DATABASE_ENV_VAR: "mysql"})


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("SELECT ? FROM t", "SELECT %s FROM t"),
        ("WHERE a LIKE '50%' AND b = ?", "WHERE a LIKE '50%%' AND b = %s"),
        ("SELECT 'what?', \"col?\", ?", "SELECT 'what?', \"col?\", %s"),
        ("SELECT 'it''s?' || ?", "SELECT 'it''s?' || %s"),
    ],
)
def test_to_pyformat(query: str, expected: str) -> None:
    assert to_pyformat(query) == expected


def test_merge_config_nested() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 1}

    merged = merge_config(base, {"a": {"c": [2]}, "e": 3})

    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 3}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
