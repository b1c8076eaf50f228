"""`splitinfer generate`: split generation, both halves in this process or against a server."""

from __future__ import annotations

import argparse
import sys

from splitinfer.errors import ConfigError

HELP = "generate text with the model cut in two (in-process, or --server tcp://HOST:PORT)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the user prompt (wrapped in the chat template unless --no-chat)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="bundled model name, local HF directory or .gguf file (default: %(default)s)")
    p.add_argument("--cut", default="15",
                   help="layer index k to cut at (device runs layers 0..k-1); a comma list gives a chain")
    p.add_argument("--codec", default=None, help="activation codec for the uplink (default: none in-process, "
                   "the default codec with --server)")
    p.add_argument("--server", default=None, help="tcp://HOST:PORT of a `splitinfer serve` process (the first hop of "
                   "a relay chain), or a comma list of replicas of it: a session moves to the next when one dies")
    p.add_argument("--u-shape", action="store_true",
                   help="with --cut a,b: a U-shaped split: this side runs layers [0, a) and [b, L) with the head and "
                        "samples; the server (serve --u-shape) runs [a, b) and returns the hidden state")
    p.add_argument("--down-codec", default=None,
                   help="with --u-shape: the codec of the hidden state coming back (default: the uplink's --codec)")
    p.add_argument("--defense", default=None,
                   help="privacy defense run on the device before the codec (the server needs no change): "
                        "gaussian, dchi, fisher_noise, nopeek or secret_adapter (the last three are fitted "
                        "once per model and cut, then cached); secret_permutation needs a server with folded "
                        "weights, so only without --server; its parameters with --defense-param")
    p.add_argument("--defense-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense parameter, repeatable: e.g. --defense gaussian --defense-param sigma=0.1 "
                        "--defense-param seed=3")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on this side (default: torch's, all cores); 1 is steadier on a small "
                        "shared CPU")
    p.add_argument("--device", default="cpu",
                   help="torch device of the device half: cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--dtype", default="float32",
                   help="dtype the device half computes in: float32, bfloat16 or float16 (default: %(default)s)")
    p.add_argument("--server-device", default=None,
                   help="without --server: torch device of the in-process server half (default: cpu); a "
                        "`splitinfer serve` process has its own (serve --device)")
    p.add_argument("--server-dtype", default=None,
                   help="without --server: dtype of the in-process server half (default: float32)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate, >= 1 (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="send the prompt raw, without the chat template")
    p.add_argument("--stats", action="store_true", help="print bytes and timings after the answer")
    p.add_argument("--speculate", default="off", metavar="auto|N|off",
                   help="speculative split decoding: the device drafts tokens and the server verifies them in "
                        "one round trip (same greedy text, fewer round trips); auto picks the number of drafts "
                        "from measured round-trip time and acceptance, N (1-16) fixes it (default: off)")
    p.add_argument("--drafter", default="ngram", choices=("ngram", "early_exit"),
                   help="with --speculate: ngram = prompt lookup (free, strong when the answer copies the "
                        "input); early_exit = the model's head on the cut's hidden state through an adapter "
                        "fitted once on public text and cached (default: %(default)s)")


def parse_cuts(text: str) -> list[int]:
    try:
        return [int(c) for c in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"--cut {text!r} is not an int or a comma-separated list of ints (e.g. 15 or 4,20)") from None


def check_arguments(args: argparse.Namespace) -> list[int]:
    """Refuse bad input before any weights load (a model takes seconds to load; a typo should not).

    Returns the cuts, checked against the model's layer count read without its weights."""
    from splitinfer.models import peek_num_layers, validate_cuts

    if not str(args.prompt).strip():
        raise ConfigError("the prompt is empty; give the text to answer, e.g. "
                          "splitinfer generate \"What is the capital of France?\"")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: give a number of tokens >= 1")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: give a number of threads >= 1 (or leave it out)")
    cuts = parse_cuts(args.cut)
    placements(args)
    check_topology_arguments(args)
    from splitinfer.split.speculative import parse_speculate

    parse_speculate(getattr(args, "speculate", None))  # a bad value is refused before the model loads
    num_layers = peek_num_layers(args.model)
    try:
        cuts = validate_cuts(cuts, num_layers)
    except ConfigError:
        raise
    except ValueError as e:  # validate_cuts' plain ValueError: bad input here, so a UserError
        raise ConfigError(f"--cut {args.cut}: {e}") from None
    if getattr(args, "u_shape", False):
        from splitinfer.split.ushape import check_ushape_cuts

        check_ushape_cuts(cuts, num_layers)
    return cuts


def check_topology_arguments(args: argparse.Namespace) -> None:
    """--server's addresses, and what --u-shape / --down-codec need, checked before the model loads."""
    if getattr(args, "server", None):
        from splitinfer.transport.replicas import parse_urls

        parse_urls(args.server)
    if not getattr(args, "u_shape", False):
        if getattr(args, "down_codec", None):
            raise ConfigError("--down-codec is the U-shape's downlink codec; add --u-shape (a chain returns tokens)")
        return
    if getattr(args, "speculate", "off") not in (None, "off"):
        raise ConfigError("--u-shape samples on the device: --speculate (server-side verification) does not apply; "
                          "drop one of them")
    if args.down_codec:
        from splitinfer.codecs import build_codec
        from splitinfer.split.ushape import check_downlink_codec

        check_downlink_codec(build_codec(args.down_codec))


def placements(args: argparse.Namespace):
    """The device half's and the in-process server half's (device, dtype), checked: one line for a device
    that is not visible, an unknown dtype, or a dtype the device cannot run."""
    from splitinfer.split.placement import Placement

    device = Placement.of(getattr(args, "device", None), getattr(args, "dtype", None))
    server_device, server_dtype = getattr(args, "server_device", None), getattr(args, "server_dtype", None)
    if getattr(args, "server", None) and (server_device or server_dtype):
        raise ConfigError("--server-device/--server-dtype place the in-process server half; with --server the "
                          "server process has its own: start it with `splitinfer serve --device ... --dtype ...`")
    return device, Placement.of(server_device, server_dtype, prefix="server_")


def build_defense_arg(args: argparse.Namespace):
    """The --defense and --defense-param flags as a defense object (None without --defense)."""
    from splitinfer.privacy.defenses import available_defenses, build_defense

    if not args.defense:
        if args.defense_param:
            raise ConfigError("--defense-param needs --defense NAME (one of: "
                              f"{', '.join(available_defenses())})")
        return None

    params = {}
    for item in args.defense_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--defense-param {item!r}: give KEY=VALUE, e.g. sigma=0.1")
        try:
            params[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"--defense-param {item!r}: {value!r} is not a number") from None
    try:
        return build_defense(args.defense, **params)
    except TypeError as e:
        raise ConfigError(f"--defense {args.defense}: bad parameter ({e})") from None


def main(args: argparse.Namespace) -> int:
    from splitinfer.models import load_model
    from splitinfer.split import SamplingConfig, in_process_generator

    cuts = check_arguments(args)
    codec = None
    if args.codec:
        from splitinfer.codecs import build_codec

        codec = build_codec(args.codec)  # an unknown codec is refused before the model loads, too
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.seed)
    defense = build_defense_arg(args)  # refused before the model loads, like the codec
    placement, server_placement = placements(args)
    lm = load_model(args.model)
    if args.server:
        from splitinfer.transport.topology import connect

        gen = connect(lm, cuts, args.server, codec=codec, down_codec=args.down_codec, u_shape=args.u_shape,
                      sampling=sampling, defense=defense, placement=placement)
    elif args.u_shape:
        from splitinfer.split.ushape import in_process_ushape_generator

        gen = in_process_ushape_generator(lm, cuts, codec=codec, down_codec=args.down_codec, sampling=sampling,
                                          defense=defense, placement=placement, server_placement=server_placement)
    else:
        gen = in_process_generator(lm, cuts, codec=codec, sampling=sampling, defense=defense, placement=placement,
                                   server_placement=server_placement)
    gen = speculative_wrap(gen, lm, cuts, args)
    printed = ""

    def stream(token_ids: list[int]) -> None:
        # Decode the whole answer so far and print only what is new: multi-token characters
        # (and tokenizer spacing) come out right.
        nonlocal printed
        text = lm.decode(token_ids)
        if text.startswith(printed):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text

    try:
        res = gen.generate(args.prompt, args.max_new_tokens, chat=not args.no_chat, on_token=stream)
    finally:
        gen.link.close()
    if res.text.startswith(printed):
        sys.stdout.write(res.text[len(printed):])
    print()
    if args.stats:
        n = len(res.token_ids)
        print(f"[{res.prompt_tokens} prompt tokens, {n} new; uplink {res.bytes_up} B, downlink {res.bytes_down} B; "
              f"prefill {res.prefill_s * 1e3:.1f} ms, decode {res.decode_s_per_token * 1e3:.1f} ms/token]",
              file=sys.stderr)
        for i, hop in enumerate(getattr(gen.link, "hops", [])):
            print(f"[hop {i + 2} (relay -> next server): uplink {hop['bytes_up']} B, downlink {hop['bytes_down']} B, "
                  f"{hop['seconds'] * 1e3:.1f} ms over {hop['steps']} steps]", file=sys.stderr)
        if hasattr(res, "rounds"):
            print(f"[speculative ({args.drafter}): {res.rounds} decode round trips for {n - 1} tokens, "
                  f"{res.accepted}/{res.drafted} drafts accepted]", file=sys.stderr)
    return 0


def speculative_wrap(gen, lm, cuts: list[int], args: argparse.Namespace):
    """The same device half and link, driven by a SpeculativeGenerator when --speculate is on."""
    from splitinfer.split.speculative import SpeculativeGenerator, parse_speculate

    gamma = parse_speculate(getattr(args, "speculate", None))
    if gamma is None:
        return gen
    from splitinfer.split.drafters import build_drafter

    drafter = build_drafter(args.drafter, lm=lm, cut=cuts[0]) if args.drafter != "ngram" else build_drafter("ngram")
    return SpeculativeGenerator(lm, gen.device, gen.link, drafter, gamma=gamma)
