# Sourced by the scripts in this folder: create .venv with a Python >= 3.10
# and install the package with its test dependencies into it.
VENV="${VENV:-$PWD/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python=""
  # A name on PATH may be a shim that fails to run, so each one is tried.
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
      >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
  if [[ -z "$python" ]]; then
    echo "No Python 3.10 or newer found on PATH (tried python3, python3.1x)" >&2
    exit 1
  fi
  "$python" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
export VENV
