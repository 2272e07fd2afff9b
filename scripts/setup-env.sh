#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv and install MIRO with everything it needs.
# Idempotent: re-installs only when pyproject.toml files changed since the last successful run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The `miro demo` browser tests drive Debian's chromium (never a downloaded browser): install it when it is
# missing and apt is there and we are root; otherwise say how (those tests fail under CI=true without it).
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium + chromium-driver (apt) for the miro demo browser tests" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
      || echo "warning: apt-get could not install chromium; the miro demo browser tests need /usr/bin/chromium" >&2
  else
    echo "note: /usr/bin/chromium is missing; as root run: apt-get install chromium chromium-driver (miro demo browser tests)" >&2
  fi
fi
stamp=.venv/.miro-installed
want="$(cat pyproject.toml plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import miro_core" 2>/dev/null; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes: torch + transformers)" >&2
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision as a matching pair (DESIGN.md section 9), then the project and its test extras.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
for p in plugins/*/; do
  [ -f "$p/pyproject.toml" ] && .venv/bin/python -m pip install -q -e "$p"
done
echo "$want" > "$stamp"
