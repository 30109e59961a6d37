# Sourced by the scripts in this folder: create .venv with a Python >= 3.10
# and install the package with its test dependencies into it.
VENV="${VENV:-$PWD/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python="$(command -v python3.12 || command -v python3.11 || command -v python3.10 || command -v python3)"
  "$python" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
export VENV
