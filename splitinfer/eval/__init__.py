"""Task accuracy through the split path, with EleutherAI's lm-evaluation-harness (the `eval` extra).

- `SplitLM` (harness.py): an lm-eval model computing loglikelihood, loglikelihood_rolling and
  generate_until through device half → defense → codec → link → server half (in process or a served half);
  importing this package registers it as lm-eval's model `splitinfer`.
- `tasks.py`: offline tasks (local `dataset_path: json` files, resolved and checked before lm-eval runs)
  and the task shipped with splitinfer (`splitinfer_mc`).
- `compare.py`: split vs unsplit per task, paired over examples, with an interval.
"""

from __future__ import annotations

from typing import Any

from splitinfer.errors import NotFoundError

INSTALL_HINT = "pip install 'splitinfer[eval]' (or `pip install lm-eval==0.4.13`)"


class LmEvalMissingError(NotFoundError):
    """lm-evaluation-harness is not installed."""


def require_lm_eval() -> None:
    """Fail with one line when the `eval` extra is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LmEvalMissingError(f"task evaluation needs lm-evaluation-harness, which is not installed: "
                                 f"{INSTALL_HINT}") from None


def __getattr__(name: str) -> Any:
    if name == "SplitLM":  # imported on first use: lm-eval is an optional dependency and slow to import
        require_lm_eval()
        from splitinfer.eval.harness import SplitLM

        return SplitLM
    raise AttributeError(name)
