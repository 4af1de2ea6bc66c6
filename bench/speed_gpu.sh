#!/usr/bin/env bash
# Does a Wanda-pruned model run faster on a CUDA GPU? One self-contained run of bench/speed.py.
#
#   OUT=/tmp/speed bash bench/speed_gpu.sh
#
# Made for a fresh GPU machine holding this repository, which may not reach the internet: it
# uses the torch already installed (never installs one), says plainly when CUDA is missing, and
# fetches nothing unless told to (PULL=1 runs `optishear assets pull`; PIP=1 pip-installs the
# project's other missing dependencies). Without the bundled weights in the cache it times the
# same architectures with random weights (the timing depends on shapes and the pattern, not on
# weight values; the notes say which). It writes under $OUT:
#   env.txt                      python, torch, CUDA, GPU, cuSPARSELt
#   <dtype>/speed.md, speed.json the table and the raw reports, one folder per dtype
#   speed.md                     every table, one after the other
#   pytest_gpu.txt               the gpu-marked tests of tests/unit/test_speed.py
#   run.log                      everything printed
# Settings (environment): PYTHON (the interpreter), MODELS (smollm2-135m,qwen2.5-0.5b), DTYPES ("float16 bfloat16"),
# BATCH_SIZES (1,8,32), PROMPT_LEN (512), DECODE_TOKENS (64), REPEATS (5), WARMUP (2).
# Exit status: 0 all ran, 3 no CUDA, 4 dependencies missing, 5 a benchmark run failed.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/speed_out}"
MODELS="${MODELS:-smollm2-135m,qwen2.5-0.5b}"
DTYPES="${DTYPES:-float16 bfloat16}"
BATCH_SIZES="${BATCH_SIZES:-1,8,32}"
PROMPT_LEN="${PROMPT_LEN:-512}"
DECODE_TOKENS="${DECODE_TOKENS:-64}"
REPEATS="${REPEATS:-5}"
WARMUP="${WARMUP:-2}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO" || exit 1
exec > >(tee "$OUT/run.log") 2>&1

# PYTHON names the interpreter; else the project's venv when there is one, else python3.
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
if [[ -z "$PY" ]]; then echo "speed_gpu: no python3 on PATH"; exit 4; fi
# The repository itself is importable without installing it (installing would pull torch).
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
echo "speed_gpu: python $PY, results in $OUT"

# --- torch and CUDA ---------------------------------------------------------------------------
if ! "$PY" - >"$OUT/env.txt" 2>&1 <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.platform())
try:
    import torch
except ImportError as exc:
    print("torch: NOT INSTALLED:", exc)
    sys.exit(3)
print("torch", torch.__version__, "built with CUDA", torch.version.cuda)
if not torch.cuda.is_available():
    print("CUDA: NOT AVAILABLE (this torch build has no CUDA, or no GPU/driver is visible)")
    sys.exit(3)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
print("cuSPARSELt available", torch.backends.cusparselt.is_available(),
      "version", torch.backends.cusparselt.version())
EOF
then
    cat "$OUT/env.txt"
    echo "speed_gpu: CUDA IS MISSING: no GPU timing is possible with this python/torch ($PY)."
    echo "speed_gpu: install a CUDA build of torch, or set PYTHON=/path/to/a/python/that/has/one, and rerun."
    echo "CUDA missing; see env.txt" >"$OUT/CUDA_MISSING.txt"
    exit 3
fi
cat "$OUT/env.txt"

# --- the project's other dependencies (torch excluded) -----------------------------------------
missing="$("$PY" - <<'EOF'
import re, tomllib
from importlib.metadata import PackageNotFoundError, version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for spec in deps:
    name = re.split(r"[<>=!~ \[]", spec, maxsplit=1)[0]
    if name == "torch":
        continue
    try:
        version(name)
    except PackageNotFoundError:
        print(spec)
EOF
)"
if [[ -n "$missing" ]]; then
    echo "speed_gpu: missing dependencies:" $missing
    if [[ "${PIP:-0}" == "1" ]]; then
        # shellcheck disable=SC2086  # one argument per requirement
        "$PY" -m pip install $missing || { echo "speed_gpu: pip install failed (no network?)"; exit 4; }
    else
        echo "speed_gpu: rerun with PIP=1 to pip-install them (needs the package index)"
        exit 4
    fi
fi

if [[ "${PULL:-0}" == "1" ]]; then
    IFS=',' read -ra names <<<"$MODELS"
    pull_args=()
    for m in "${names[@]}"; do pull_args+=(--model "$m"); done
    "$PY" -m optishear --no-progress assets pull "${pull_args[@]}" ||
        echo "speed_gpu: assets pull failed; models not in the cache get random weights"
fi

# --- the benchmark ------------------------------------------------------------------------------
status=0
: >"$OUT/speed.md"
for dtype in $DTYPES; do
    echo "speed_gpu: $dtype"
    if "$PY" bench/speed.py --models "$MODELS" --weights auto --device cuda --dtype "$dtype" \
        --kernel auto --batch-sizes "$BATCH_SIZES" --prompt-len "$PROMPT_LEN" \
        --decode-tokens "$DECODE_TOKENS" --repeats "$REPEATS" --warmup "$WARMUP" \
        --out "$OUT/$dtype"; then
        cat "$OUT/$dtype/speed.md" >>"$OUT/speed.md"
    else
        echo "speed_gpu: bench/speed.py failed for $dtype"
        status=5
    fi
done

if "$PY" -c "import pytest" 2>/dev/null; then
    # without pytest-timeout the project's `timeout` ini key is unknown: do not fail on that
    "$PY" -m pytest tests/unit/test_speed.py -m gpu -q -p no:cacheprovider \
        -W ignore::pytest.PytestConfigWarning -o addopts="--import-mode=importlib" \
        >"$OUT/pytest_gpu.txt" 2>&1
    echo "speed_gpu: gpu tests exit $? (see pytest_gpu.txt): $(tail -n 1 "$OUT/pytest_gpu.txt")"
else
    echo "speed_gpu: pytest not installed; gpu tests not run" | tee "$OUT/pytest_gpu.txt"
fi
echo "speed_gpu: done, exit $status; tables in $OUT/speed.md"
exit "$status"
