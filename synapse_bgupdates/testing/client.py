"""A JSON client for a test homeserver, with helpers for users and rooms.

It uses only the standard library and talks to 127.0.0.1 alone. Requests
return their status and decoded body whatever the status, and the helpers
raise ``HomeserverRequestError`` when the homeserver rejects them.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import urllib.parse
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_PASSWORD = "test-password"


def _decode_body(body: bytes) -> Any:
    if not body:
        return None
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class HomeserverRequestError(RuntimeError):
    """A helper's request returned an unexpected HTTP status.

    Attributes:
        response: The response that the homeserver sent.
    """

    def __init__(self, method: str, path: str, response: HttpResponse) -> None:
        super().__init__(
            f"{method} {path} returned HTTP {response.status}: {response.json!r}"
        )
        self.response = response


class HttpResponse(NamedTuple):
    """Status and decoded body of an HTTP response.

    Attributes:
        status: The HTTP status code.
        json: The decoded JSON body; the body as text when it is not JSON, and
            None when it is empty.
    """

    status: int
    json: Any


class HomeserverClient(abc.ABC):
    """Requests to a homeserver listening on 127.0.0.1.

    Subclasses provide the port and the shared registration secret.
    """

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """TCP port of the homeserver's HTTP listener."""

    @property
    @abc.abstractmethod
    def registration_shared_secret(self) -> str:
        """Secret for the shared-secret registration admin API."""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw_body: bytes | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> HttpResponse:
        """Send one HTTP request to the homeserver.

        Statuses of 4xx and 5xx are returned, not raised.

        Args:
            method: The HTTP method, like ``"GET"``.
            path: The path and query string, already URL-encoded.
            body: A value to send as JSON; nothing is sent when None.
            token: An access token for the ``Authorization`` header.
            raw_body: Bytes to send as they are, with a JSON content type, to
                test invalid bodies. Exclusive with ``body``.
            timeout_s: Seconds to wait for the connection and the response.

        Returns:
            The status and decoded body.

        Raises:
            ValueError: Both ``body`` and ``raw_body`` are given.
            OSError: The connection failed, for example because the homeserver
                is stopped.
        """
        if body is not None and raw_body is not None:
            raise ValueError("Pass either body or raw_body, not both")
        payload = raw_body if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=timeout_s
        )
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            body_bytes = response.read()
        finally:
            connection.close()
        logger.debug("%s %s returned HTTP %d", method, path, response.status)
        return HttpResponse(response.status, _decode_body(body_bytes))

    def _request_ok(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> Any:
        response = self.request(method, path, body, token=token)
        if response.status != 200:
            raise HomeserverRequestError(method, path, response)
        return response.json

    def register_user(
        self,
        localpart: str,
        password: str = DEFAULT_PASSWORD,
        *,
        admin: bool = False,
    ) -> tuple[str, str]:
        """Register a user through the shared-secret registration admin API.

        Args:
            localpart: The user's localpart, like ``"alice"``.
            password: The user's password.
            admin: Whether the user is a server admin.

        Returns:
            The user id and an access token.

        Raises:
            HomeserverRequestError: The homeserver rejected a request.
        """
        path = "/_synapse/admin/v1/register"
        nonce = self._request_ok("GET", path)["nonce"]
        mac = hmac.new(
            self.registration_shared_secret.encode("utf-8"),
            b"\x00".join(
                [
                    nonce.encode("utf-8"),
                    localpart.encode("utf-8"),
                    password.encode("utf-8"),
                    b"admin" if admin else b"notadmin",
                ]
            ),
            hashlib.sha1,
        ).hexdigest()
        registered = self._request_ok(
            "POST",
            path,
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac,
            },
        )
        return str(registered["user_id"]), str(registered["access_token"])

    def create_room(self, token: str, **content: Any) -> str:
        """Create a room; ``content`` is the body of the createRoom request.

        Returns:
            The room id.

        Raises:
            HomeserverRequestError: The homeserver rejected the request.
        """
        created = self._request_ok(
            "POST", "/_matrix/client/v3/createRoom", content, token=token
        )
        return str(created["room_id"])

    def join_room(self, token: str, room_id_or_alias: str) -> str:
        """Join a room as the user who owns ``token``.

        Returns:
            The room id.

        Raises:
            HomeserverRequestError: The homeserver rejected the request.
        """
        room = urllib.parse.quote(room_id_or_alias, safe="")
        joined = self._request_ok(
            "POST", f"/_matrix/client/v3/join/{room}", {}, token=token
        )
        return str(joined["room_id"])

    def send_message(self, token: str, room_id: str, text: str) -> str:
        """Send an ``m.text`` message to a room.

        Returns:
            The event id.

        Raises:
            HomeserverRequestError: The homeserver rejected the request.
        """
        room = urllib.parse.quote(room_id, safe="")
        transaction_id = secrets.token_hex(8)
        sent = self._request_ok(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{transaction_id}",
            {"msgtype": "m.text", "body": text},
            token=token,
        )
        return str(sent["event_id"])
