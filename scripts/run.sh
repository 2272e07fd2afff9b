#!/usr/bin/env bash
# Set up .venv (if needed) and run the main job: `miro-run` on the built-in world (no downloads).
# Extra arguments go to miro-run (e.g. --preset quick, --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup-env.sh
exec .venv/bin/miro-run "$@"
