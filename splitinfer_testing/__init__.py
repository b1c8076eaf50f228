"""Test harnesses for splitinfer, kept out of the runtime package: `splitinfer` never imports this, so
it needs none of their dependencies (hypothesis, psutil: the `dev` extra, `pip install -e .[dev]`).

Why a top-level package and not `tests/`: `scripts/reliability_report.py` and `scripts/bench_failover.py`
run the same scenarios as `tests/reliability/` (one implementation), and scripts import installed
packages; `tests/` is not one. Why not `splitinfer/testing`: importing it would load `splitinfer`'s
runtime and make the harness part of the package a user installs for inference.
"""

import importlib.util

_MISSING = [m for m in ("hypothesis", "psutil") if importlib.util.find_spec(m) is None]
if _MISSING:
    raise ImportError(f"splitinfer_testing needs {', '.join(_MISSING)}, which are not installed; allowed: an "
                      "environment with the dev extra; do: pip install -e '.[dev]'")
