#!/usr/bin/env bash
# The GPU checks of a `--features gpu` build, in one go, on a machine with a GPU:
#   bench/gpu_check.sh MTSEG_BINARY OUT_DIR [PYTHON_WITH_TORCH]
# 1. `mtseg bench --quick --device gpu` (does the GPU path run at all?);
# 2. `mtseg bench --device gpu` with PyTorch on CUDA in the same run (figures a-d);
# 3. training on phantoms on the GPU, then the same model segmenting a scan on the GPU and on
#    the CPU kernels: the two label maps should be identical (else their Dice is printed);
# 4. with several GPUs, data-parallel training on all of them (`--gpus N`).
# Run from the repository root (the bench reads bench/torch_reference.py).
set -euo pipefail
mtseg=$1
out=$2
python=${3:-python3}
mkdir -p "$out"

echo "== 1. quick bench"
"$mtseg" bench --quick --device gpu | tee "$out/bench_quick.txt"

echo "== 2. bench against PyTorch"
"$mtseg" bench --device gpu --torch-python "$python" --repetitions 3 | tee "$out/bench_gpu.txt"

echo "== 3. train on the GPU, segment on GPU and CPU"
"$mtseg" -q phantoms --out "$out/phantoms" --size 48 --cases 6
"$mtseg" -q train --device gpu --datasets "$out"/phantoms/Dataset9* --out "$out/train" \
    --iterations 200 | tee "$out/train.txt"
dataset=$(ls -d "$out"/phantoms/Dataset901*)
image=$(ls "$dataset"/imagesTr/*.nii.gz | tail -1)
mkdir -p "$out/gpu" "$out/cpu"
for device in gpu cpu; do
    "$mtseg" segment --device $device -m "$out/train/model.mtseg" --task PhantomBrainMRI \
        -i "$image" -o "$out/$device/case.nii.gz"
done
if cmp -s "$out/gpu/case.nii.gz" "$out/cpu/case.nii.gz"; then
    echo "GPU and CPU label maps are identical"
else
    "$mtseg" -q evaluate --pred "$out/gpu" --ref "$out/cpu" --labels "$dataset/dataset.json" \
        -o "$out/agreement"
    echo "GPU and CPU label maps differ; Dice between them:"
    cat "$out/agreement/summary.md"
fi

echo "== 4. data-parallel training on every GPU"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if [ "${gpus:-0}" -ge 2 ]; then
    "$mtseg" -q train --device gpu --gpus "$gpus" --datasets "$out"/phantoms/Dataset9* \
        --out "$out/train_dp" --iterations 100 | tee "$out/train_dp.txt"
else
    echo "one GPU: the data-parallel path is the one step 3 ran (--gpus 1)"
fi
