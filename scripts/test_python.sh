#!/usr/bin/env bash
# The Python package: built from source (pip install ./python, through maturin from the package
# registry) into a virtual environment under target/, then its tests (pytest) against the CLI.
# usage: scripts/test_python.sh [MTSEG] [DATA]   (defaults: target/debug/mtseg, ../shared/data)
# Without python3 it says SKIPPED loudly, and fails under MTSEG_REQUIRE_SHARED_DATA=1.
set -euo pipefail
mtseg=$(realpath "${1:-target/debug/mtseg}")
data=$(realpath -m "${2:-../shared/data}")
if ! command -v python3 >/dev/null; then
  echo "*** SKIPPED: no python3: the Python package was not built or tested ***" >&2
  [ "${MTSEG_REQUIRE_SHARED_DATA:-}" = 1 ] && exit 1
  exit 0
fi
venv=target/python-package
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# The package's own Rust build shares nothing with the workspace's: its own target folder.
CARGO_TARGET_DIR="$PWD/target/python" "$venv/bin/pip" install --quiet "./python[test]"
MTSEG_BIN=$mtseg MTSEG_DATA=$data "$venv/bin/python" -m pytest -q python/tests
