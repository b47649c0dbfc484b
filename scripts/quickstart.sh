#!/usr/bin/env bash
# Installs fffsklearn (CPU torch) and runs the quickstart: train, predict, accuracy and speed.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet torch
python -m pip install --quiet .
python examples/quickstart.py
