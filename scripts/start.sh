#!/usr/bin/env bash
# Start ComfyUI with this node pack loaded (web UI on http://127.0.0.1:8188), or run one workflow headless.
#
#   bash scripts/start.sh [--port N] [--listen ADDR] [--ckpt PATH] [-- MORE_COMFYUI_ARGS]
#   bash scripts/start.sh --headless-demo [--workflow FILE] [--ckpt PATH]
#
# Installs what is missing into .venv/ first. ComfyUI's base directory (models, custom_nodes,
# input, output, user) is comfy_base/ in this repository, or $HRV_COMFY_BASE. Without --ckpt and
# without a checkpoint in comfy_base/models/checkpoints/, a random-weight SD1.5 checkpoint is
# used so everything runs: its images are noise.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

PORT=8188
LISTEN=127.0.0.1
CKPT=""
DEMO=0
WORKFLOW=""
EXTRA=()
while (($#)); do
    case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --listen) LISTEN="${2:?--listen needs a value}"; shift 2 ;;
        --ckpt) CKPT="${2:?--ckpt needs a value}"; shift 2 ;;
        --headless-demo) DEMO=1; shift ;;
        --workflow) WORKFLOW="${2:?--workflow needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
if [[ -n "$CKPT" && ! -f "$CKPT" ]]; then echo "--ckpt $CKPT: no such file" >&2; exit 2; fi
if [[ -n "$WORKFLOW" && ! -f "$WORKFLOW" ]]; then echo "--workflow $WORKFLOW: no such file" >&2; exit 2; fi
[[ -n "$CKPT" ]] && CKPT="$(abspath "$CKPT")"
[[ -n "$WORKFLOW" ]] && WORKFLOW="$(abspath "$WORKFLOW")"

source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
BASE="$(realpath -m "${HRV_COMFY_BASE:-$REPO_ROOT/comfy_base}")"
cd "$REPO_ROOT"
CKPT_ARGS=()
[[ -n "$CKPT" ]] && CKPT_ARGS=(--ckpt "$CKPT")

# The published HRVs: from the reference copy beside the repository when there is one, else downloaded.
if [[ ! -f data/hrv_vectors/sd1_official.safetensors || ! -f data/hrv_vectors/sdxl_official.safetensors ]]; then
    if [[ -d ../shared/hrv_reference ]]; then
        "$VENV_PYTHON" -m hrv import-official ../shared/hrv_reference data/hrv_vectors \
            || echo "[start] WARNING: could not import the official HRVs; the HRV nodes will have no vectors to load" >&2
    else
        "$VENV_PYTHON" -m hrv fetch-official \
            || echo "[start] WARNING: could not download the official HRVs; run 'python -m hrv fetch-official' later" >&2
    fi
fi

if ((DEMO)); then
    WORKFLOW_ARGS=()
    [[ -n "$WORKFLOW" ]] && WORKFLOW_ARGS=(--workflow "$WORKFLOW")
    exec "$VENV_PYTHON" -m scripts.demo run --base-dir "$BASE" --output "$REPO_ROOT/output" \
        "${CKPT_ARGS[@]}" "${WORKFLOW_ARGS[@]}"
fi

"$VENV_PYTHON" -m scripts.demo prepare --base-dir "$BASE" "${CKPT_ARGS[@]}"
DEVICE_ARGS=()
"$VENV_PYTHON" -c "import sys; from hrv.comfy_host import accelerator_available as a; sys.exit(0 if a() else 1)" \
    || DEVICE_ARGS=(--cpu)
echo "[start] ComfyUI with the HRV nodes on http://$LISTEN:$PORT (base directory $BASE); Ctrl+C stops it" >&2
# exec: SIGINT/SIGTERM go straight to ComfyUI; run_comfyui.py makes both stop it the way Ctrl+C does.
# The database goes into the base directory: ComfyUI's default path lies inside its own install folder.
exec "$VENV_PYTHON" "$REPO_ROOT/scripts/run_comfyui.py" --listen "$LISTEN" --port "$PORT" --base-directory "$BASE" \
    --database-url "sqlite:///$BASE/user/comfyui.db" "${DEVICE_ARGS[@]}" "${EXTRA[@]}"
