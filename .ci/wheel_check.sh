#!/usr/bin/env bash
# Installed, not only checked out (issue 14, point 4): build the wheel, install it in a fresh
# virtual environment and, from a directory outside the repository with nothing of the checkout
# on the path, run `rmdiag run --sim-users 200` and README's evaluators property-testing example.
# Usage: .ci/wheel_check.sh [PYTHON]  (PYTHON has `build`, the dev extra's; default .venv's)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-$repo/.venv/bin/python}
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")  # absolute: we cd below
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH
started=$SECONDS

# build from a copy of the files git knows (tracked, or new and not ignored): a stale build/ or
# *.egg-info in the checkout cannot leak into the wheel, and none is written into it
mkdir "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -cf - -T - 2>/dev/null) | tar -xf - -C "$work/src"
"$python" -m build --wheel --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
    || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/rmdiag-*.whl)

# every package of the checkout and its py.typed is in the wheel
"$python" - "$wheel" "$work/src" <<'PY'
import sys, zipfile
from pathlib import Path
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
src = Path(sys.argv[2])
packages = sorted({str(p.parent.relative_to(src)) for top in ("rmdiag", "evaluators", "trainers")
                   for p in (src / top).rglob("*.py")})
missing = [f"{d}/{p.name}" for d in packages for p in (src / d).glob("*.py")
           if f"{d}/{p.name}" not in names]
missing += [f"{top}/py.typed" for top in ("rmdiag", "evaluators", "trainers")
            if f"{top}/py.typed" not in names]
if missing:
    sys.exit(f"the wheel lacks {missing}")
print(f"wheel: {Path(sys.argv[1]).name}, {len(packages)} packages")
PY

# a fresh environment; torch==2.13.0 (CPU) first, so that no dependency pulls a CUDA build
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "torch==2.13.0"
"$work/venv/bin/python" -m pip install -q "$wheel" hypothesis
installed=$SECONDS

mkdir "$work/run"
cd "$work/run"
"$work/venv/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path
import evaluators, rmdiag, trainers
for module in (rmdiag, evaluators, trainers):
    where = Path(module.__file__).resolve()
    if Path(sys.argv[1]).resolve() in where.parents:
        sys.exit(f"{module.__name__} was imported from the checkout: {where}")
PY
"$work/venv/bin/rmdiag" run --sim-users 200 --out out > run.log 2>&1 || { cat run.log; exit 1; }
test -s out/summary.json && test -s out/report.html
ran=$SECONDS

# README's example, as written there, with `my_ndcg_at_5` standing for the user's own code
"$work/venv/bin/python" - "$repo/README.md" > example.py <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
after = text[text.index("To property-test your own metric code"):]
block = re.search(r"```python\n(.*?)```", after, re.S).group(1)
print("from evaluators import ranking_metrics\n\n\n"
      "def my_ndcg_at_5(scores, targets, exclude):\n"
      "    return ranking_metrics(scores, targets, ks=(5,), exclude=exclude)['ndcg@5']\n\n")
print(block)
print("test_my_ndcg()")
PY
"$work/venv/bin/python" example.py
echo "wheel check passed: build + install $((installed - started)) s, rmdiag run" \
    "$((ran - installed)) s, example $((SECONDS - ran)) s"
