#!/usr/bin/env bash
# Run the whole test suite on the real ComfyUI: bash scripts/test.sh [PYTEST_ARGS...]
# Installs what is missing into .venv/ first (the same setup as start.sh, plus requirements-test.txt).
# Arguments go to pytest; when none of them is a path, the suite in tests/ runs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" --test
cd "$REPO_ROOT"

ARGS=("$@")
HAS_PATH=0
for a in "$@"; do
    [[ "$a" != -* && -e "${a%%::*}" ]] && HAS_PATH=1
done
((HAS_PATH)) || ARGS=(tests "${ARGS[@]}")
if [[ "${CI:-}" == "true" ]]; then
    # Slowest tests in the log, to keep an eye on the CI time budget.
    ARGS+=(--durations=15)
fi
exec "$VENV_PYTHON" -m pytest -q "${ARGS[@]}"
