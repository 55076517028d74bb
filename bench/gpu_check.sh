#!/usr/bin/env bash
# The benchmarks' GPU check in one short run (about 2-3 minutes on an H100/H200; the timeouts cap it at 8):
# SD1.5 steering at 512x512, SDXL steering at 1024x1024 (fp16, UNet batch 2 = cond + uncond), the build's vote
# overhead (SD1.5 fp16), the heat-map recorder's (SD1.5 fp16, 2 images x cond + uncond) and Attend-and-Excite's
# guided steps, then the key ratios. The GPU machine has torch, transformers, safetensors, numpy but no
# ComfyUI and no network, so everything it needs travels in .gpu (ignored by git, named in the run's carry):
#   bash bench/gpu_check.sh prepare     here, once: .gpu/comfyui and .gpu/reference (../shared/gpu/bundle.sh) and
#                                       .gpu/site (ComfyUI's pure-Python samplers need torchsde and trampoline)
#   bash bench/gpu_check.sh             there, from the project root; logs and summary.txt go to $OUT
#   bash bench/gpu_check.sh edit        there: HRV Prompt Edit's time and memory instead, SD1.5 512 and SDXL 1024
#                                       (bench/edit.py, every kind in its own process; about 4 minutes)
# CPU dry run of every command at tiny sizes (ignores .gpu unless it exists): SMOKE=1 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

if [[ "${1:-}" == prepare ]]; then
    set -e
    [[ -d .gpu/comfyui && -d .gpu/reference ]] || bash ../shared/gpu/bundle.sh .gpu
    site=$(ls -d .venv/lib/python3*/site-packages | head -1)
    rm -rf .gpu/site && mkdir -p .gpu/site
    for pkg in torchsde trampoline; do
        (cd "$site" && tar -c --exclude=__pycache__ "$pkg") | tar -x -C .gpu/site
    done
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
    du -sh .gpu
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[[ -d .gpu/comfyui ]] && export COMFYUI_DIR=$root/.gpu/comfyui
[[ -d .gpu/site ]] && export PYTHONPATH=$root/.gpu/site${PYTHONPATH:+:$PYTHONPATH}
ref=.gpu/reference
[[ -d $ref ]] || ref=../shared/hrv_reference
py=${PYTHON:-python3}                      # the GPU machine's python3 holds torch; here the pack's .venv does
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && py=.venv/bin/python

if [[ -n "${SMOKE:-}" ]]; then   # every command, on the CPU, at sizes that run in seconds to a minute
    dev="--device cpu --unet tiny"
    sd1="--size 16 --steps 1 --pairs 1 --attn-reps 1"
    sdxl="--size 8 --steps 1 --pairs 1 --attn-reps 1 --warmup 0"
    build="--size 16 --steps 1 --pairs 1 --attn-reps 1 --batch 1,2"
    heatmap="--unet tiny --size 16 --pairs 1 --warmup 0"
    excite="--size 16 --steps 2 --max-refinement 1"
    limits=(900 900 900 900 900)
else
    dev="--device cuda"
    sd1="--size 64 --steps 10 --pairs 8 --attn-reps 30"
    sdxl="--size 128 --steps 6 --pairs 4 --attn-reps 10"
    build="--size 64 --steps 8 --pairs 4 --attn-reps 10 --batch 1,16"
    heatmap="--size 64 --pairs 20 --warmup 3"
    excite="--size 64 --steps 10 --max-refinement 3"
    limits=(70 130 110 60 90)
fi

{ nvidia-smi -L 2>&1 || echo "no nvidia-smi"; } | tee "$OUT/nvidia-smi.txt"
if [[ "${1:-}" == edit ]]; then
    if [[ -n "${SMOKE:-}" ]]; then sizes=("--latent 8 --steps 2 --repeats 1" "--latent 8 --steps 2 --repeats 1")
    else sizes=("--latent 64 --steps 20 --repeats 3" "--latent 128 --steps 20 --repeats 2"); fi
    : >"$OUT/summary.txt"
    for i in 0 1; do
        arch=(sd1 sdxl); name=edit_${arch[$i]}
        echo "== $name"
        # shellcheck disable=SC2086
        timeout --kill-after=10 300 "$py" bench/edit.py --arch "${arch[$i]}" $dev \
            ${sizes[$i]} --reference-dir "$ref" >"$OUT/$name.log" 2>&1
        echo "$name exit=$?" >>"$OUT/summary.txt"
        grep -h -E '^(\[checks\] (identical|hrv_strength)|plain |replace|refine|edit_)' "$OUT/$name.log" | sed "s/^/$name: /" >>"$OUT/summary.txt"
    done
    cat "$OUT/summary.txt"
    exit 0
fi
echo "python: $py ($($py -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1)); COMFYUI_DIR=${COMFYUI_DIR:-unset}"

run() {  # name, timeout, command...
    local name=$1 limit=$2; shift 2
    echo "== $name (timeout ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep -v -e 'torchaudio missing' "$OUT/$name.log" | tail -n 25
    echo "== $name: exit $rc after $((SECONDS - start))s"
    echo "$name exit=$rc seconds=$((SECONDS - start))" >>"$OUT/summary.txt"
}

: >"$OUT/summary.txt"
# shellcheck disable=SC2086  # the option strings split into words on purpose
run steering_sd1 "${limits[0]}" "$py" bench/steering.py --arch sd1 $dev --dtype fp16 $sd1 --reference-dir "$ref"
# shellcheck disable=SC2086
run steering_sdxl "${limits[1]}" "$py" bench/steering.py --arch sdxl $dev --dtype fp16 $sdxl --reference-dir "$ref"
# shellcheck disable=SC2086
run build_sd1 "${limits[2]}" "$py" bench/build.py --arch sd1 $dev --dtype fp16 $build
# shellcheck disable=SC2086
run heatmap_sd1 "${limits[3]}" "$py" bench/heatmap.py ${dev/--unet tiny/} --dtype fp16 $heatmap --reference-dir "$ref"
# shellcheck disable=SC2086
run excite_sd1 "${limits[4]}" "$py" bench/excite.py $dev --dtype fp16 $excite --reference-dir "$ref"

echo "== key ratios (targets: attn_overhead_ratio <= 1.10, overhead_ratio <= 1.02, build_overhead_ratio <= 1.10)"
for name in steering_sd1 steering_sdxl build_sd1 heatmap_sd1 excite_sd1; do
    grep -h -E '^(attention,|sampling step|plain step|vote step|batch [0-9]+[: ]|best batch|UNet call|per step|per UNet call|refinement:|outputs bit|[a-z_]+_ratio=)' "$OUT/$name.log" 2>/dev/null \
        | sed "s/^/$name: /" >>"$OUT/summary.txt"
done
cat "$OUT/summary.txt"
