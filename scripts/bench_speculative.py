"""Speculative split decoding against per-token split, hand-off, all-on-server and all-on-device.

    python scripts/bench_speculative.py                     # default: 5 links x cuts 4 8 15 22, 6 prompts
    python scripts/bench_speculative.py --links 4g_lte loopback --cuts 15 --max-new-tokens 32 --prompts 2

Every split mode runs through the split path (DeviceHalf -> SimulatedLink(InProcessLink(ServerHalf))):
the link moves the real codec frames, counts them and adds each round trip's simulated network time
(rtt + bytes / bandwidth of conf/link/*.yaml) without sleeping it; compute is this machine's wall clock
(device and server on the same CPU, one after the other). Modes:
  per_token        SplitGenerator: one round trip per token
  spec_ngram       SpeculativeGenerator, prompt-lookup drafter, adaptive gamma
  spec_early_exit  SpeculativeGenerator, early-exit head + fitted adapter at the cut, adaptive gamma
  handoff          device prefills, uploads its KV cache once, the server decodes alone
  all_server       token ids up once, the whole model on the server, ids streamed back
  all_device       the whole model on the device, no network
Per-token split's text is the reference: every other mode's greedy tokens are compared with it.
Writes results.csv (one row per prompt x cut x link x mode), summary.csv, acceptance.csv and a figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from splitinfer.metrics import speculative_bench as bench
from splitinfer.report import speculative as spec

PROMPTS = [  # (kind, text): chat requests and input-grounded ones (the answer reuses the input)
    ("chat", "What are three simple tips for staying healthy?"),
    ("grounded", "Fix the bug in this Python function and return the corrected code only:\n```python\n"
                 "def average(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n"
                 "    return total / len(number)\n```"),
    ("chat", "Explain what a neural network is in simple terms."),
    ("grounded", "Rewrite the following paragraph in the past tense: The team walks to the station every "
                 "morning. They buy coffee at the small shop, read the news on the train and arrive at the "
                 "office before nine. In the evening they walk home along the river."),
    ("chat", "Write a short poem about the sea."),
    ("grounded", "Summarise this text in two sentences: The city council approved a plan to build a new "
                 "public library in the town centre. The library will have a children's section, a cafe "
                 "and a room for community events. Construction starts next spring and should take two "
                 "years. The council said the plan is paid for by a grant from the national government."),
]
HELDOUT_PROMPTS = [  # the n-gram study's held-out set: never used to choose a setting before that study
    ("chat", "Give me two ideas for a rainy Sunday afternoon with children."),
    ("grounded", "Translate the variable names in this code to English and return the code only:\n```python\n"
                 "def calcola_media(numeri):\n    somma = sum(numeri)\n    return somma / len(numeri)\n```"),
    ("chat", "Why is the sky blue? Answer in three sentences."),
    ("grounded", "Correct the spelling mistakes in this sentence and return it: Yesterday I recieved a leter "
                 "from my freind who lives in a beatiful vilage near the mountains."),
    ("chat", "What should I pack for a three-day hiking trip?"),
    ("grounded", "Turn this list into one sentence: apples, two loaves of bread, a litre of milk, six eggs, "
                 "butter, and a bag of rice."),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cuts", type=int, nargs="+", default=[4, 8, 15, 22])
    ap.add_argument("--links", nargs="+", default=["3g", "4g_lte", "5g", "wifi", "loopback"])
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-gamma", type=int, default=8)
    ap.add_argument("--drafters", nargs="+", default=["ngram", "early_exit"], choices=("ngram", "early_exit"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="experiments/speculative_split")
    ap.add_argument("--from-csv", action="store_true",
                    help="only rebuild summary.csv and the figure from OUT/results.csv (e.g. of an interrupted run)")
    ap.add_argument("--ngram-study", nargs="*", type=int, metavar="MIN_N",
                    help="no timing: acceptance counts of the n-gram drafter for these min n-gram sizes "
                         "(default 1 2 3) at a fixed gamma, benchmark and held-out prompts; OUT/ngram_min.csv")
    ap.add_argument("--gamma", type=int, default=4, help="fixed gamma of --ngram-study")
    ap.add_argument("--adapter-study", action="store_true",
                    help="no timing: teacher-forced top-1 agreement with the full model on held-out text "
                         "(licenses) of the logit lens, the ridge adapter and the distilled MLP adapter per cut; "
                         "OUT/adapter_agreement.csv")
    ap.add_argument("--heldout-tokens", type=int, default=2048)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.from_csv:
        spec.rebuild(out, args.links)
        return 0
    from splitinfer.models import load_model
    from splitinfer.report.runs import load_link

    lm = load_model(args.model)
    if args.ngram_study is not None:
        sets = [("benchmark", PROMPTS[: args.prompts]), ("heldout", HELDOUT_PROMPTS)]
        bench.ngram_study(lm, args.cuts[0], args.ngram_study or [1, 2, 3], args.gamma, args.max_new_tokens, sets, out)
    elif args.adapter_study:
        bench.adapter_study(lm, args.cuts, args.heldout_tokens, out)
    else:
        bench.run_benchmark(lm, PROMPTS[: args.prompts], args.cuts, {n: load_link(n) for n in args.links},
                            args.drafters, args.max_new_tokens, args.max_gamma, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
