#!/usr/bin/env bash
# The whole test suite, offline, as CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache --no-logo  # imports point down: pyproject.toml [tool.importlinter]
.venv/bin/pytest "$@"
