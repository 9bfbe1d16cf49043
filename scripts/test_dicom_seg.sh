#!/usr/bin/env bash
# DICOM in and DICOM SEG out checked with pydicom and highdicom (scripts/check_dicom_seg.py),
# in a virtual environment this script makes under target/ from the package registry.
# usage: scripts/test_dicom_seg.sh [MTSEG] [DATA]   (defaults: target/debug/mtseg, ../shared/data)
# Without python3 or the data it says SKIPPED loudly, and fails under
# MTSEG_REQUIRE_SHARED_DATA=1 (as CI sets it).
set -euo pipefail
mtseg=$(realpath "${1:-target/debug/mtseg}")
data=$(realpath -m "${2:-../shared/data}")
skip() {
  echo "*** SKIPPED: the DICOM SEG check did not run: $1 ***" >&2
  if [ "${MTSEG_REQUIRE_SHARED_DATA:-}" = 1 ]; then exit 1; fi
  exit 0
}
command -v python3 >/dev/null || skip "no python3"
[ -d "$data/Dataset001_BrainTissueIXI" ] || skip "$data is missing"
venv=target/python-dicom-check
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pydicom highdicom nibabel numpy
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" scripts/check_dicom_seg.py "$mtseg" "$data" "$work"
