"""Plot the decode-latency ratio of every wait mode in the saved bench_transport runs.

    python experiments/transport_latency/plot.py        # reads run_*.csv here, writes decode_ratio.png
    python experiments/transport_latency/plot.py --out /tmp/ratio.png

One group per codec x wait mode, one bar per run: the median of per-prompt split / unsplit ratios with
its bootstrap 95 % interval (the CSV's decode_ratio_per_prompt and per_prompt_ci95), and the issue's
1.03 target as a line. The reading and drawing are `splitinfer.report.transport_latency`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from splitinfer.report.transport_latency import plot_decode_ratio  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "decode_ratio.png"), help="where to write the figure")
    args = ap.parse_args(argv)
    runs = sorted(HERE.glob("run_*.csv"))
    if not runs:
        print(f"no run_*.csv in {HERE}; run scripts/bench_transport.py --csv {HERE}/run_<time>.csv first",
              file=sys.stderr)
        return 2
    plot_decode_ratio(runs, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
