"""The demo that the README gives as the first command runs to the end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synapse_bgupdates.testing.databases import DatabaseKind, database_kind_from_env

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    database_kind_from_env() is not DatabaseKind.SQLITE,
    reason="the demo always runs on SQLite",
)
def test_demo_runs_to_end(tmp_path: Path) -> None:
    # Only the package's own folder is on the path, as after a plain install:
    # the demo must find the example module by itself.
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "examples" / "demo.py"),
            "--workdir",
            str(tmp_path),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "POST start_job regenerate_directory -> 200 {}" in result.stdout
    assert "POST start_job example_room_event_counts -> 200 {}" in result.stdout
    assert "all 8 rooms match" in result.stdout
    assert "Homeserver stopped." in result.stdout
