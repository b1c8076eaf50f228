"""Speculative split decoding: the device drafts γ tokens, the server verifies them in one round trip.

    gen = SpeculativeGenerator(lm, device, link, build_drafter("ngram"), gamma="auto")
    res = gen.generate("Summarise: ...", max_new_tokens=64)   # same greedy text as SplitGenerator
    res.acceptance_rate, res.mean_accepted, res.rounds

Each round the device runs its stage on [x, d1..dγ] (x = the last token the server gave), sends those
γ+1 hidden states in one message with the drafted ids (`link.verify`), and gets back the accepted
prefix d1..dk plus the server's own next token; both sides drop their KV past position start+k. With
nothing drafted a round is a plain split step, so a drafter that has no guess costs nothing.
`gamma="auto"` (`GammaController`) picks γ each round from the measured link time, device and server
step times and the running acceptance rate, and drafts nothing when speculation does not pay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from splitinfer.errors import ConfigError
from splitinfer.split.generator import GenerationResult, SplitGenerator
from splitinfer.split.server import MAX_DRAFT


def parse_speculate(value) -> int | str | None:
    """`--speculate` / `split.speculate`: None/off/0 (no speculation), 'auto' or a fixed γ in 1..16."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none", "")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = None
    if n is None or isinstance(value, bool) or isinstance(value, float) or not 0 <= n <= MAX_DRAFT:
        raise ConfigError(f"speculate={value!r}: use 'auto', 'off' or a number of drafted tokens 1..{MAX_DRAFT}")
    return n or None


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens one round yields with γ drafts, each accepted with probability α: (1-α^(γ+1))/(1-α)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


class _CostTable:
    """Seconds a step over n positions takes, as EMAs per n; unseen n interpolated linearly."""

    def __init__(self, prior_slope: float = 0.1, decay: float = 0.8) -> None:
        self.ema: dict[int, float] = {}
        self.prior_slope = prior_slope  # fraction of the one-position cost each extra position adds
        self.decay = decay

    def add(self, n: int, seconds: float) -> None:
        old = self.ema.get(n)
        self.ema[n] = seconds if old is None else self.decay * old + (1 - self.decay) * seconds

    def __call__(self, n: int) -> float | None:
        if not self.ema:
            return None
        if n in self.ema:
            return self.ema[n]
        ns = sorted(self.ema)
        lo = max((k for k in ns if k < n), default=None)
        hi = min((k for k in ns if k > n), default=None)
        if lo is not None and hi is not None:
            w = (n - lo) / (hi - lo)
            return (1 - w) * self.ema[lo] + w * self.ema[hi]
        if len(ns) >= 2:  # extrapolate from the two nearest
            a, b = (ns[-2], ns[-1]) if hi is None else (ns[0], ns[1])
            slope = max(0.0, (self.ema[b] - self.ema[a]) / (b - a))
        else:
            slope = self.prior_slope * self.ema[ns[0]] / ns[0]
        k = lo if hi is None else hi
        return max(0.0, self.ema[k] + slope * (n - k))


class GammaController:
    """Picks γ for the next round: the γ in 0..max_gamma with the most expected tokens per second,
    E(α, γ) / (draft(γ) + device(γ+1) + link(γ+1)), from measured times and the running acceptance α.
    `fixed` pins γ instead. γ = 0 (a plain split step) wins when the round trip is cheap, e.g. loopback;
    then every `probe_every` rounds it tries γ = 1 so that the estimates stay current."""

    def __init__(self, fixed: int | None = None, max_gamma: int = 8, start_gamma: int = 4,
                 probe_every: int = 32, decay: float = 0.9) -> None:
        if fixed is not None and not 0 <= fixed <= MAX_DRAFT:
            raise ConfigError(f"gamma={fixed!r}: must be in 0..{MAX_DRAFT}")
        if not 1 <= max_gamma <= MAX_DRAFT:
            raise ConfigError(f"max_gamma={max_gamma!r}: must be in 1..{MAX_DRAFT}")
        self.fixed = fixed
        self.max_gamma = max_gamma
        self.start_gamma = min(start_gamma, max_gamma)
        self.probe_every = probe_every
        self.decay = decay
        self.link = _CostTable()
        self.device = _CostTable()
        self.draft_s = 0.0  # seconds per drafted token (EMA)
        self.accepted = 1.0  # decayed counts: a weak prior of α = 0.5
        self.rejected = 1.0
        self._plain_rounds = 0

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def observe(self, positions: int, device_s: float, link_s: float, drafted: int, accepted: int,
                draft_s: float = 0.0) -> None:
        self.link.add(positions, link_s)
        self.device.add(positions, device_s)
        if drafted:
            d = self.decay
            self.accepted = d * self.accepted + accepted
            self.rejected = d * self.rejected + (1 if accepted < drafted else 0)
            per = draft_s / drafted
            self.draft_s = per if not self.draft_s else 0.8 * self.draft_s + 0.2 * per

    def round_s(self, gamma: int) -> float | None:
        link, dev = self.link(gamma + 1), self.device(gamma + 1)
        if link is None or dev is None:
            return None
        return link + dev + gamma * self.draft_s

    def choose(self, remaining: int) -> int:
        """γ for a round that may emit at most `remaining` tokens."""
        cap = max(0, min(self.max_gamma, remaining - 1))
        if self.fixed is not None:
            return min(self.fixed, cap)
        if self.round_s(0) is None:
            return min(self.start_gamma, cap)
        best, best_rate = 0, 1.0 / max(self.round_s(0), 1e-9)
        for g in range(1, cap + 1):
            t = self.round_s(g)
            rate = expected_tokens(self.alpha, g) / max(t, 1e-9)
            if rate > best_rate:
                best, best_rate = g, rate
        if best == 0 and cap >= 1:
            self._plain_rounds += 1
            if self._plain_rounds % self.probe_every == 0:
                return 1
        return best


@dataclass
class SpeculativeResult(GenerationResult):
    """A generation's result plus what speculation did: rounds (round trips after prefill), drafted
    and accepted tokens, γ of each round."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    gammas: list[int] = field(default_factory=list)
    accepted_per_round: list[int] = field(default_factory=list)
    network_s: float = 0.0  # simulated network seconds not slept (SimulatedLink(sleep=False))

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (nan when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def mean_accepted(self) -> float:
        """Mean tokens emitted per decode round (accepted drafts + the server's own): 1 = no gain."""
        n = len(self.token_ids) - 1
        return n / self.rounds if self.rounds else float("nan")


def _network_s(link) -> float:
    """Simulated network seconds a link added without sleeping them (0 for real or sleeping links)."""
    if getattr(link, "sleep", True):
        return 0.0
    return float(getattr(link, "simulated_s", 0.0))


class SpeculativeGenerator(SplitGenerator):
    """SplitGenerator's speculative counterpart: same device half, link and server half, fewer round trips.

    Greedy output is the per-token split decoder's (the server accepts a draft only if it is its own
    argmax); with sampling the server's acceptance rule keeps the output distribution.
    """

    def __init__(self, lm, device, link, drafter, gamma: int | str = "auto", *, max_gamma: int = 8) -> None:
        super().__init__(lm, device, link)
        spec = parse_speculate(gamma)
        if spec is None:
            spec = 0
        self.drafter = drafter
        self.gamma = spec
        self.max_gamma = max_gamma
        self.controller = self._new_controller()

    def _new_controller(self) -> GammaController:
        fixed = None if self.gamma == "auto" else int(self.gamma)
        return GammaController(fixed=fixed, max_gamma=self.max_gamma)

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int = 32, *, chat: bool = True, stop_at_eos: bool = True,
                 on_token=None) -> SpeculativeResult:
        """Generate up to `max_new_tokens`; `on_token(token_ids_so_far)` is called after each round."""
        ids = self._prompt_ids(prompt, max_new_tokens, chat)
        link, device, drafter, ctl = self.link, self.device, self.drafter, self.controller
        link.reset()
        device.reset()
        cache = device.new_cache()
        eos = self.lm.eos_token_ids if stop_at_eos else set()
        prompt_ids = ids[0].tolist()
        drafter.start(prompt_ids)

        net0 = _network_s(link)
        t0 = time.perf_counter()
        token = self._send(device.hidden(ids, cache), 0)
        prefill_s = time.perf_counter() - t0
        res = SpeculativeResult("", [token], ids.shape[1], 0, 0, prefill_s)
        if on_token is not None:
            on_token(res.token_ids)
        pos = ids.shape[1]  # position of `token`, not yet through the device stage
        while len(res.token_ids) < max_new_tokens and token not in eos:
            t_round = time.perf_counter()
            gamma = ctl.choose(max_new_tokens - len(res.token_ids))
            t_dev = time.perf_counter()
            draft_s = 0.0
            if drafter.uses_hidden:
                draft, hs, t = [], [], token
                for i in range(gamma + 1):
                    h = device.hidden(torch.tensor([[t]]), cache)
                    hs.append(h)
                    if i < gamma:
                        td = time.perf_counter()
                        t = drafter.from_hidden(h[0, -1])
                        draft_s += time.perf_counter() - td
                        draft.append(t)
                hidden = hs[0] if len(hs) == 1 else torch.cat(hs, 1)
            else:
                draft = drafter.propose(prompt_ids + res.token_ids, gamma)[:gamma] if gamma else []
                draft_s = time.perf_counter() - t_dev
                hidden = device.hidden(torch.tensor([[token, *draft]]), cache)
            enc = device.encode(hidden)
            device_s = time.perf_counter() - t_dev - draft_s
            net = _network_s(link)
            t_link = time.perf_counter()
            new = link.verify(enc, pos, draft) if draft else [link.step(enc, pos)]
            link_s = time.perf_counter() - t_link + _network_s(link) - net
            k = len(new) - 1
            device.rollback(cache, pos + k + 1)
            ctl.observe(len(draft) + 1, device_s, link_s, len(draft), k, draft_s)
            res.rounds += 1
            res.drafted += len(draft)
            res.accepted += k
            res.gammas.append(len(draft))
            res.accepted_per_round.append(k)
            for j, t in enumerate(new):  # stop at EOS and at the budget, as per-token decoding does
                if len(res.token_ids) >= max_new_tokens:
                    break
                res.token_ids.append(t)
                if t in eos:
                    new = new[: j + 1]
                    break
            pos += k + 1
            token = res.token_ids[-1]
            res.decode_s.append(time.perf_counter() - t_round)
            if on_token is not None:
                on_token(res.token_ids)
        res.network_s = _network_s(link) - net0
        res.text = self.lm.decode(res.token_ids)
        res.bytes_up, res.bytes_down = link.bytes_up, link.bytes_down
        return res


def evaluate_speculative(lm, cut: int, prompts: torch.Tensor, gen_tokens: int, *, speculate="auto",
                         drafter: str = "ngram", codec=None, link_profile=None,
                         reference: torch.Tensor | None = None) -> dict[str, float]:
    """Speculative split generation of each prompt (greedy, through SimulatedLink(link_profile) without
    sleeping, so `auto` adapts to that link): the flat `spec_*` metrics the latency model reads
    (`splitinfer.metrics.latency.estimate_modes`), and how many texts equal `reference` (P, G) ids."""
    from splitinfer.split.drafters import build_drafter
    from splitinfer.split.generator import split_pair
    from splitinfer.split.link import InProcessLink
    from splitinfer.split.simulated import SimulatedLink

    gamma = parse_speculate(speculate)
    device, server = split_pair(lm, [cut], codec=codec)
    link = InProcessLink(server)
    if link_profile is not None:
        link = SimulatedLink.from_profile(link, link_profile, sleep=False)
    gen = SpeculativeGenerator(lm, device, link, build_drafter(drafter, lm=lm, cut=cut), gamma=gamma or 0)
    rounds = drafted = accepted = tokens = positions = up = same = 0
    for p in range(prompts.shape[0]):
        res = gen.generate(prompts[p:p + 1], gen_tokens, stop_at_eos=False)
        rounds += res.rounds
        drafted += res.drafted
        accepted += res.accepted
        tokens += len(res.token_ids) - 1
        positions += res.drafted + res.rounds
        up += link.traffic.up_decode_bytes
        if reference is not None:
            same += int(res.token_ids == reference[p].tolist())
    out = {"spec_speculate": str(speculate), "spec_drafter": drafter, "spec_rounds": rounds,
           "spec_drafted": drafted, "spec_accepted": accepted,
           "spec_acceptance": accepted / drafted if drafted else float("nan"),
           "spec_tokens_per_round": tokens / rounds if rounds else float("nan"),
           "spec_positions_per_round": positions / rounds if rounds else float("nan"),
           "spec_up_bytes_per_round": up / rounds if rounds else float("nan")}
    if reference is not None:
        out["spec_same_text_as_reference_frac"] = same / prompts.shape[0]
    return out
