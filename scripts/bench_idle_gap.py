"""How much slower does a split half compute after waiting for the other half? One process, no link.

In a real split each side waits while the other computes (~25-40 ms per decode step for SmolLM2 on
one CPU thread). Some machines run the next compute slower after such a wait: a core that slept may
come back at a lower clock or, on a VM, after the host gave its physical core to someone else. That
cost lands on every split decode step whatever the transport does, so measure it before reading
`bench_transport.py`'s ratios:

    python scripts/bench_idle_gap.py                  # cut 15, 3 prompts x 64 tokens, gaps none/sleep/spin/rehearse
    python scripts/bench_idle_gap.py --gap-ms 5,30 --prompts 5

For each decode step it runs the device stage and the server stage of an in-process split, with,
before each stage, either no gap, a `time.sleep` of the other stage's typical time (the core idles,
like a blocking `splitinfer serve` / `generate`), a busy spin of the same length (like
`--busy-poll-ms --no-rehearse`), or a spin that rehearses that stage's step path on a tiny shadow
model (`splitinfer.transport.warm`, what `--busy-poll-ms` does by default). It prints the median time
of each stage and the slowdown against no gap. Figures, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_transport import PROMPTS, encode_prompts  # noqa: E402


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _rehearse(rehearsal):
    def wait(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            rehearsal(lambda: time.perf_counter() >= end)  # "the message is here" when the gap is over
    return wait


GAPS = ("none", "sleep", "spin", "rehearse")


@torch.no_grad()
def run(halves, ids, tokens: int, gap: str, gaps_s: tuple[float, float], rehearsals=(None, None)):
    """Decode `tokens` steps with the device half and the server half (`split_pair`) back to back, with
    `gap` before each half; returns each half's per-step times."""
    device, server = halves
    waits = {"none": (lambda s: None,) * 2, "sleep": (time.sleep,) * 2, "spin": (_spin,) * 2,
             "rehearse": tuple(_rehearse(r) if r else _spin for r in rehearsals)}[gap]
    dev_cache, session = device.new_cache(), server.session()
    token = session.step(device.hidden(ids, dev_cache), 0)
    pos, dev, srv = ids.shape[1], [], []
    for _ in range(tokens - 1):
        waits[0](gaps_s[0])  # the device waits while the server computes
        t0 = time.perf_counter()
        hidden = device.hidden(torch.tensor([[token]]), dev_cache)
        dev.append(time.perf_counter() - t0)
        waits[1](gaps_s[1])  # the server waits while the device computes
        t0 = time.perf_counter()
        token = session.step(hidden, pos)
        srv.append(time.perf_counter() - t0)
        pos += 1
    return dev, srv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--prompts", type=int, default=3, help=f"how many prompts (max {len(PROMPTS)})")
    ap.add_argument("--tokens", type=int, default=64, help="decode steps per prompt")
    ap.add_argument("--gap-ms", default=None,
                    help="DEVICE_WAIT,SERVER_WAIT in ms (default: the measured server and device stage times)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as bench_transport)")
    args = ap.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts {args.prompts}: choose 1..{len(PROMPTS)}")
    torch.set_num_threads(args.threads)

    from splitinfer.generation import split_pair
    from splitinfer.models import load_model

    lm = load_model(args.model)
    halves = split_pair(lm, [args.cut], codec="none")
    prompts = encode_prompts(lm, args.prompts)
    dev, srv = run(halves, prompts[0], 16, "none", (0.0, 0.0))  # warm-up, and the default gaps
    if args.gap_ms:
        try:
            gaps_s = tuple(float(g) / 1e3 for g in args.gap_ms.split(","))
        except ValueError:
            gaps_s = ()
        if len(gaps_s) != 2 or min(gaps_s) < 0:
            ap.error(f"--gap-ms {args.gap_ms!r}: give two non-negative numbers, DEVICE_WAIT,SERVER_WAIT")
    else:
        gaps_s = (statistics.median(srv), statistics.median(dev))
    from splitinfer.transport.payload import RawCodec
    from splitinfer.transport.server import _head_on_last_position_only
    from splitinfer.transport.warm import device_rehearsal, server_rehearsal

    rehearsals = (device_rehearsal(lm, [args.cut], RawCodec()),
                  server_rehearsal(lm, [args.cut], RawCodec(), _head_on_last_position_only))
    results = {g: ([], []) for g in GAPS}
    for ids in prompts:  # interleaved, so drift hits every mode alike
        for gap, (d, s) in results.items():
            dd, ss = run(halves, ids, args.tokens, gap, gaps_s, rehearsals)
            d += dd
            s += ss
    med = statistics.median
    base = results["none"]
    print(f"{lm.name}, cut {args.cut}, {len(prompts)} prompts x {args.tokens} decode steps, torch threads "
          f"{torch.get_num_threads()}; gap before the device stage {gaps_s[0] * 1e3:.1f} ms, before the server "
          f"stage {gaps_s[1] * 1e3:.1f} ms")
    print(f"{'gap':8s}  {'device ms':>9s}  {'server ms':>9s}  {'sum ms':>7s}  {'vs no gap':>9s}")
    for gap, (d, s) in results.items():
        total = med(d) + med(s)
        print(f"{gap:8s}  {med(d) * 1e3:9.2f}  {med(s) * 1e3:9.2f}  {total * 1e3:7.2f}  "
              f"{total / (med(base[0]) + med(base[1])):9.3f}")
    print("(medians per decode step; 'vs no gap' = (device + server) / the same without a gap: what waiting "
          "alone costs on this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
