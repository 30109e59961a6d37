#!/usr/bin/env bash
# Run the test suite: unit tests, then the end-to-end tests against real
# homeservers on SQLite and on PostgreSQL (127.0.0.1:5432, user postgres).
# Creates .venv and installs the package with its test dependencies first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

run_pytest() {
  local status=0
  "$VENV/bin/pytest" "$@" || status=$?
  # pytest exits 5 when it collected no test: that is a failure here.
  if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests for: $*" >&2
  fi
  return $status
}

run_pytest -q tests
SYNAPSE_BGUPDATES_TEST_DB=postgres run_pytest -q tests/e2e
