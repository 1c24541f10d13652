#!/usr/bin/env bash
# Bench for a machine with a CUDA GPU, in one go (sized for about 4 minutes, under 6):
#   1. augmentation images/s: ours (batched, per-image draws) vs torchvision's RandAugment
#      called per image, on the GPU and on the CPU (bench/augment.py);
#   2. train images/s of the small, median and large networks of the default space at
#      batch 128 and 512: (a) ours, (b) ours without augmentation, (c) torchvision per
#      image in DataLoader workers (bench/train.py);
#   3. the projected seconds for one trial of the seed's scenario with the median network:
#      10k images x 200 epochs at (a)'s images/s at batch 128, training steps only;
#   4. the small network's aggregate train images/s with K = 1, 2 and 4 worker processes
#      training at once on the one device, batch 128: what SMS_WORKERS_PER_POD=K buys
#      (bench/procs.py; raise K while the figure still grows, docs/OPERATING.md).
# All on synthetic uint8 data of CIFAR-10's shape (3x32x32, 10 classes). Prints one table.
#
# Without a CUDA device it runs on the CPU, clearly labelled, with fewer images and steps
# and batches 16 and 32 in place of 128 and 512: a check that the script works, not a
# figure to record.
#
#   bench/gpu.sh            # PYTHON=… to use another interpreter than .venv/bin/python
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
SEED_IMAGES=$((10000 * 200)) # the seed's trial: 10k images x 200 epochs

device=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
if [[ $device == cuda ]]; then
    gpu=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')
    mode="GPU: $gpu"
    batches=(128 512)
    aug_gpu=(--device cuda --images 2048 --batch 512 --repeats 3)
    aug_cpu=(--device cpu --images 2048 --batch 512 --repeats 3)
    train=(--device cuda --rounds 3 --round-s 1 --max-steps 50)
    procs=(--device cuda --batch 128 --rounds 3 --seconds 3 --warmup 10)
else
    mode="CPU FALLBACK (no CUDA device): batches 16/32 stand in for 128/512, few steps; NOT GPU figures"
    batches=(16 32)
    aug_gpu=()
    aug_cpu=(--device cpu --images 512 --batch 128 --repeats 1)
    train=(--device cpu --rounds 1 --round-s 0.5 --max-steps 3 --warmup 1 --images 256)
    procs=(--device cpu --batch 16 --rounds 1 --seconds 0.5 --warmup 1 --images 256)
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/sms-bench-gpu.XXXXXX")
started=$SECONDS
echo "bench/gpu.sh: $mode; logs in $logs" >&2

# The RESULT line of a bench's log.
result() { grep '^RESULT ' "$1" | tail -n 1; }

echo "augmentation on the CPU ..." >&2
"$PYTHON" bench/augment.py "${aug_cpu[@]}" >"$logs/augment-cpu.log" 2>&1
if ((${#aug_gpu[@]})); then
    echo "augmentation on the GPU ..." >&2
    "$PYTHON" bench/augment.py "${aug_gpu[@]}" >"$logs/augment-gpu.log" 2>&1
fi
echo "training, batches ${batches[*]} ..." >&2
"$PYTHON" bench/train.py "${train[@]}" --batches "$(
    IFS=,
    echo "${batches[*]}"
)" >"$logs/train.log" 2>&1
echo "K worker processes on one device, K = 1, 2, 4 ..." >&2
"$PYTHON" bench/procs.py "${procs[@]}" --procs 1,2,4 >"$logs/procs.log" 2>&1

{
    echo "== bench/gpu.sh: $mode =="
    echo "date $(date -u +%Y-%m-%dT%H:%MZ), host $(hostname), cpus $(nproc), $("$PYTHON" -c 'import torch; print("torch", torch.__version__)')"
    printf '%-34s %6s %12s %12s %12s %8s %8s\n' \
        "what" "batch" "(a) ours" "(b) no aug" "(c) tvision" "a/b" "a/c"
    for kind in gpu cpu; do
        [[ -f $logs/augment-$kind.log ]] || continue
        line=$(result "$logs/augment-$kind.log")
        batch=$(grep -o 'our batch [0-9]*' "$logs/augment-$kind.log" | awk '{print $3}')
        awk -v line="$line" -v kind="$kind" -v batch="$batch" 'BEGIN {
            n = split(line, kv, /[ =]/); for (i = 2; i < n; i += 2) r[kv[i]] = kv[i + 1]
            printf "%-34s %6s %12s %12s %12s %8s %8s\n", "augment images/s (" kind ")", batch,
                r["ours_ips"], "-", r["torchvision_ips"], "-", r["ratio"]
        }'
    done
    grep '^RESULT model=' "$logs/train.log" | awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
        what = sprintf("train images/s %s (%.0f MMACs)", r["model"], r["macs"] / 1e6)
        printf "%-34s %6s %12s %12s %12s %8s %8s\n", what, r["batch"], r["ours_ips"],
            r["noaug_ips"], r["torchvision_ips"], r["aug_cost_ratio"], r["vs_torchvision"]
    }'
    grep '^RESULT model=median ' "$logs/train.log" | awk -v images="$SEED_IMAGES" -v b="${batches[0]}" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
        if (r["batch"] != b) next
        printf "seed trial, median network, batch %s: %.0f s projected (%d images at %s images/s, training steps only; the seed: about 1800 s on a V100)\n",
            b, images / r["ours_ips"], images, r["ours_ips"]
    }'
    printf '%-34s %6s %12s %12s %8s\n' "K worker processes, one device" "batch" "images/s" "per proc" "vs K=1"
    grep '^RESULT procs=' "$logs/procs.log" | awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); r[kv[1]] = kv[2] }
        what = sprintf("train images/s small, K=%s", r["procs"])
        printf "%-34s %6s %12s %12s %8s\n", what, r["batch"], r["ips"], r["per_proc"], r["vs_one"]
    }'
    echo "took $((SECONDS - started)) s; logs in $logs"
}
