"""Configuration files of a test homeserver: homeserver.yaml and its log config.

The configuration is written directly rather than by Synapse's
``--generate-config``, which takes seconds and produces far more than tests
need. It keeps all traffic on 127.0.0.1: no federation listener, no outbound
federation, no key servers, no stats reporting and no URL previews.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

SERVER_NAME = "test.local"
"""Server name of every test homeserver, fixed so that template data fits."""

# Well above anything a test sends, so that no request is rate limited.
_RELAXED_RATELIMIT = {"per_second": 10000.0, "burst_count": 100000}

# Ratelimit options of Synapse 1.163 that take a per_second/burst_count pair,
# as paths into the configuration.
_RATELIMIT_OPTIONS = (
    ("rc_message",),
    ("rc_registration",),
    ("rc_registration_token_validity",),
    ("rc_login", "address"),
    ("rc_login", "account"),
    ("rc_login", "failed_attempts"),
    ("rc_admin_redaction",),
    ("rc_joins", "local"),
    ("rc_joins", "remote"),
    ("rc_joins_per_room",),
    ("rc_key_requests",),
    ("rc_3pid_validation",),
    ("rc_invites", "per_room"),
    ("rc_invites", "per_user"),
    ("rc_invites", "per_issuer"),
    ("rc_third_party_invite",),
    ("rc_media_create",),
    ("rc_presence", "per_user"),
    ("rc_delayed_event_mgmt",),
    ("rc_room_creation",),
    ("rc_reports",),
    ("rc_user_directory",),
    ("rc_profile",),
)


@dataclass(frozen=True)
class HomeserverFiles:
    """Paths of the files a test homeserver keeps in its scratch directory.

    Attributes:
        workdir: The scratch directory.
    """

    workdir: Path

    @property
    def config(self) -> Path:
        """homeserver.yaml."""
        return self.workdir / "homeserver.yaml"

    @property
    def log_config(self) -> Path:
        """Python logging configuration that Synapse loads."""
        return self.workdir / "log_config.yaml"

    @property
    def log(self) -> Path:
        """Synapse's log at INFO level."""
        return self.workdir / "homeserver.log"

    @property
    def console_log(self) -> Path:
        """Standard output and standard error of the process.

        Errors raised before Synapse reads its log configuration, such as an
        invalid homeserver.yaml, only appear here.
        """
        return self.workdir / "console.log"

    @property
    def signing_key(self) -> Path:
        """The server's ed25519 signing key."""
        return self.workdir / f"{SERVER_NAME}.signing.key"

    @property
    def media_store(self) -> Path:
        """Directory for uploaded media."""
        return self.workdir / "media_store"


def relaxed_ratelimits() -> dict[str, Any]:
    """Return ``rc_*`` settings that let tests send requests at full speed."""
    config: dict[str, Any] = {}
    for path in _RATELIMIT_OPTIONS:
        section = config
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = dict(_RELAXED_RATELIMIT)
    return config


def merge_config(
    base: Mapping[str, Any], override: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``.

    Mappings are merged key by key at every depth. Any other value in
    ``override``, lists included, replaces the one in ``base``.

    Returns:
        The merged configuration. Neither argument is changed.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_config(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def validate_modules(modules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check entries for the ``modules`` option and return them as plain dicts.

    Args:
        modules: Entries like ``{"module": "package.Class", "config": {...}}``.

    Raises:
        ValueError: An entry is not a mapping or lacks a ``module`` string.
    """
    checked: list[dict[str, Any]] = []
    for index, entry in enumerate(modules):
        if not isinstance(entry, Mapping):
            raise ValueError(f"Invalid modules[{index}]: expected a mapping")
        if not isinstance(entry.get("module"), str):
            raise ValueError(
                f"Invalid modules[{index}]: expected a 'module' key with a dotted "
                f"class path, got {entry!r}"
            )
        checked.append(copy.deepcopy(dict(entry)))
    return checked


def build_homeserver_config(
    *,
    files: HomeserverFiles,
    port: int,
    database: Mapping[str, Any],
    registration_shared_secret: str,
    modules: Sequence[Mapping[str, Any]] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the contents of homeserver.yaml.

    Args:
        files: Paths in the homeserver's scratch directory.
        port: TCP port of the HTTP listener on 127.0.0.1.
        database: The ``database`` section.
        registration_shared_secret: Secret for the shared-secret registration
            admin API.
        modules: Entries for the ``modules`` option.
        extra_config: Options merged on top with ``merge_config``.

    Returns:
        The configuration, ready to be written as YAML.
    """
    config: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "report_stats": False,
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                # In Synapse 1.163 the client resource also serves
                # /_synapse/admin, and every HTTP listener serves /health.
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": dict(database),
        "log_config": str(files.log_config),
        "media_store_path": str(files.media_store),
        "signing_key_path": str(files.signing_key),
        "registration_shared_secret": registration_shared_secret,
        "enable_registration": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # An empty allow list makes Synapse reject every outbound federation
        # request, so a test cannot reach another host by accident.
        "federation_domain_whitelist": [],
        "url_preview_enabled": False,
        "enable_metrics": False,
        "background_updates": {"sleep_enabled": False},
        "modules": validate_modules(modules),
        **relaxed_ratelimits(),
    }
    return merge_config(config, extra_config or {})


def build_log_config(log_path: Path) -> dict[str, Any]:
    """Build a Python logging configuration that writes INFO and above to a file.

    Args:
        log_path: The log file; each start appends to it.
    """
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
                " - %(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "encoding": "utf8",
            }
        },
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` to ``path`` as YAML, replacing any existing file."""
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False), encoding="utf-8")
    logger.debug("Wrote %s", path)


def generate_signing_key(path: Path) -> None:
    """Write a new ed25519 signing key with Synapse's own key generator."""
    subprocess.run(
        [sys.executable, "-m", "synapse._scripts.generate_signing_key", "-o", path],
        check=True,
        capture_output=True,
    )
