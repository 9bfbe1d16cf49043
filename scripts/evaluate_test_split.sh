#!/usr/bin/env bash
# Segments the test cases of splits.json with a model (no --task: the model picks the task)
# and evaluates them against their reference labels.
# usage: scripts/evaluate_test_split.sh DATA_DIR OUT_DIR [MODEL] [DATASET ...]
#   DATA_DIR  nnU-Net raw datasets with splits.json (e.g. ../shared/data)
#   MODEL     a model file; default: the shipped model
#   DATASET   default: Dataset001_BrainTissueIXI Dataset002_HippocampusMSD
# SEGMENT_OPTIONS (environment) go to `mtseg segment`, e.g. "--mirror BrainTissueIXI".
# Writes OUT_DIR/<dataset>/{pred,report}; report/summary.md holds the table.
set -euo pipefail
data=$(realpath "$1"); out=$2; model=${3:-}
shift $(( $# < 3 ? $# : 3 ))
datasets=("${@:-Dataset001_BrainTissueIXI Dataset002_HippocampusMSD}")
mtseg=${MTSEG:-target/debug/mtseg}
for ds in ${datasets[@]}; do
  dir=$out/$ds
  rm -rf "$dir" && mkdir -p "$dir/images" "$dir/labels"
  for case in $(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))[sys.argv[2]]['test']))" "$data/splits.json" "$ds"); do
    ln -s "$data/$ds/imagesTr/${case}_0000.nii.gz" "$dir/images/"
    ln -s "$data/$ds/labelsTr/$case.nii.gz" "$dir/labels/"
  done
  "$mtseg" -q segment ${model:+--model "$model"} ${SEGMENT_OPTIONS:-} -i "$dir/images" -o "$dir/pred"
  "$mtseg" -q evaluate --pred "$dir/pred" --ref "$dir/labels" --labels "$data/$ds/dataset.json" -o "$dir/report" > /dev/null
  echo "$ds: $dir/report/summary.md"
done
