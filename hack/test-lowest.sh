#!/usr/bin/env bash
# The dependency floors in pyproject.toml are true: install every direct dependency at the
# lowest version its range allows (uv's --resolution lowest-direct; pip has no such mode)
# into a venv of its own, with both extras, and run the unit and integration tiers there.
# The bare install (no extras) is proved at its floors by
# tests/integration/test_install_without_extras.py, which installs that way too.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LOWEST_VENV:-.venv-lowest}
UV=${UV:-.venv/bin/uv}
PYTHON=${PYTHON:-python3}

"$UV" venv -q --allow-existing --python "$PYTHON" "$VENV"
"$UV" pip install -q --python "$VENV/bin/python" --resolution lowest-direct \
  -e '.[events,operator]' --group test
echo "== lowest versions:"
"$UV" pip list --python "$VENV/bin/python" 2>/dev/null \
  | grep -iE '^(pika|prometheus.client|pyyaml|kubernetes|kopf|pytest) ' | sed 's/^/   /'
"$VENV/bin/python" -m pytest tests -m "unit or integration" -q -p no:cacheprovider "$@"
