#!/usr/bin/env bash
# Run the demo: a homeserver with the module and the example module on SQLite,
# a directory rebuild and the example backfill followed to the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
exec "$VENV/bin/python" examples/demo.py "$@"
