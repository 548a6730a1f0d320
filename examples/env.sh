# Sourced by every example script: paths given (OUT, inputs, key=value) are the caller's; the
# repo's own files are under REPO, its package is importable from anywhere, and PY is PYTHON, else
# the repo's .venv interpreter where there is one, else python.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$([[ -x "$REPO/.venv/bin/python" ]] && echo "$REPO/.venv/bin/python" || echo python)}
