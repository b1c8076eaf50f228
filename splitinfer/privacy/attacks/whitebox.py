"""White-box exact inversion: recover the prompt left to right, verifying candidates exactly.

The threat: the server knows the public weights. In a causal LM the payload row i depends only on
tokens 0..i, so once the prefix is known, token i is the vocabulary entry whose one-token step through
the device stage (on the prefix's KV cache) reproduces row i. Without a defense the right token gives
a distance at float rounding level (~1e-7 relative) and every other token ~0.5 or more, so the check
is exact (SipIt, Nikolaou et al. 2025; DEML's prompt inversion works the same way).

What makes it fast is the order in which candidates are verified. Each round verifies, in one batch,
the union of the next few candidates of four rankings, all O(V*H) to compute:

- a ridge probe from payload rows to input embeddings, fit per cut on the attacker's own queries
  (public text with half the tokens replaced by random ones, so every part of the vocabulary is seen),
  plus a separate one for row 0 fit on random single tokens;
- the language-model prior p(x_i | recovered prefix): the attacker runs the whole public model on the
  prefix it already recovered (natural text and templates are predictable); for position 0, the
  model's guess right after the chat template's user header;
- tokens already recovered in this prompt, then the unigram order of the public auxiliary text
  (byte-level pieces of Japanese and other scripts the small LM predicts poorly);
- the first-order score of each token from the gradient of the match distance with respect to the
  input embedding, taken at the best candidate so far (SipIt's gradient step, as a ranking).

The rankings together cover the whole vocabulary, so with no candidate limit the search is exhaustive
and the result exact; a candidate limit (`max_candidates`) and a time budget bound the cost, and what
was not verified is reported. With a noisy payload (a defense, a lossy codec) the right token is no
longer at distance 0; a ratio test accepts the best candidate when it is clearly closer than the next,
and when none passes the search stops at `noisy_max_candidates` (an exhaustive search would verify
nothing more, at ~50x the cost) and keeps the closest.
Without noise only exact matches are accepted: row 0 is an attention sink whose output barely depends
on the token (relative distances ~4e-3 between different first tokens), which a ratio test would
mistake for a match.

`lm_map` (Kerckhoffs: the attacker knows the defense's kind and strength) picks each position's token
by maximum a posteriori instead of the nearest candidate: among the verified candidates, the one that
minimises d^2 x H / (2 m) - log p(x_i | recovered prefix), i.e. a Gaussian likelihood of the payload row
in the attack's metric (H dimensions, m the median squared distance of the *right* token, measured on
the attacker's own public text through its own copy of the defense: its own noise draws, or a second
secret of its own for a secret adapter) times the public LM's prior. Under heavy noise the nearest
candidate is often wrong while the right one is still among the close ones, and natural text is
predictable; on an exact payload it changes nothing (only exact matches are accepted there).
"""

from __future__ import annotations

import logging
import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import KVCache, split_model
from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion, embedding_matrix
from splitinfer.privacy.progress import bar, say

log = logging.getLogger(__name__)
METRICS = ("l2", "fisher", "auto")
# metric=auto: Fisher-weighted distances against the defenses that put their perturbation where the
# server half is insensitive, L2 (the maximum-likelihood distance for isotropic noise) otherwise.
FISHER_DEFENSES = ("fisher_noise", "secret_adapter", "nopeek")
HEARTBEAT_S = 30.0  # a progress line at least this often during one long inversion (no terminal needed)


def _expanded(cache: KVCache, batch: int) -> KVCache:
    """A cache for `batch` one-token continuations of the same prefix, sharing the prefix's tensors."""
    view = KVCache()
    for layer in cache.keys:
        view.keys[layer] = cache.keys[layer].expand(batch, -1, -1, -1)
        view.values[layer] = cache.values[layer].expand(batch, -1, -1, -1)
    return view


def _first_occurrences(x: torch.Tensor) -> torch.Tensor:
    """The distinct values of x in the order they first appear."""
    if len(x) == 0:
        return x
    uniq, inverse = torch.unique(x, return_inverse=True)
    first = torch.full((len(uniq),), len(x), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(x)), reduce="amin")
    return uniq[torch.argsort(first)]


def _rms_normalise(h: torch.Tensor) -> torch.Tensor:
    return h / h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


class WhiteBoxInversion(Attack):
    """Left-to-right exact prompt inversion with batched verification on the prefix's KV cache."""

    name = "whitebox"

    def __init__(self, batch_size: int = 96, max_batch_size: int = 768, max_candidates: int | None = None,
                 match_tol: float = 1e-4, accept_ratio: float = 0.25, probe_tokens: int = 2048,
                 probe_ridge: float = 2e-3, use_lm_prior: bool = True, use_gradient: bool = True,
                 first_round: int = 8, online_probe: bool = False, probe_refit_every: int = 1,
                 first_probe_tokens: int = 512, use_unigram: bool = True,
                 noisy_max_candidates: int | None = 512, surrogate: bool = False, metric: str = "l2",
                 lm_map: bool = False) -> None:
        if batch_size < 3 or max_batch_size < batch_size:
            raise ConfigError(f"batch_size={batch_size}, max_batch_size={max_batch_size}: need 3 <= batch_size "
                             "<= max_batch_size")
        if max_candidates is not None and max_candidates < 1:
            raise ConfigError(f"max_candidates={max_candidates!r}: must be >= 1 or None (whole vocabulary)")
        if noisy_max_candidates is not None and noisy_max_candidates < 1:
            raise ConfigError(f"noisy_max_candidates={noisy_max_candidates!r}: must be >= 1 or None (whole "
                              "vocabulary)")
        self.noisy_max_candidates = noisy_max_candidates
        if metric not in METRICS:
            raise ConfigError(f"metric={metric!r}: choose one of {METRICS} (fisher: distances weighted by the "
                              "square root of the server half's diagonal Fisher information)")
        if not isinstance(surrogate, bool):
            raise ConfigError(f"surrogate={surrogate!r}: must be true or false")
        self.surrogate, self.metric = surrogate, metric
        if not isinstance(lm_map, bool):
            raise ConfigError(f"lm_map={lm_map!r}: must be true or false")
        if lm_map and not use_lm_prior:
            raise ConfigError("lm_map=true needs use_lm_prior=true (the MAP choice weighs the LM prior)")
        self.lm_map = lm_map
        self.batch_size = int(batch_size)
        self.max_batch_size = int(max_batch_size)
        self.max_candidates = max_candidates
        self.match_tol = float(match_tol)
        self.accept_ratio = float(accept_ratio)
        self.probe_tokens = int(probe_tokens)
        self.probe_ridge = float(probe_ridge)
        self.use_lm_prior = use_lm_prior
        self.use_gradient = use_gradient
        self.first_round = int(first_round)
        self.first_probe_tokens = int(first_probe_tokens)
        self.use_unigram = bool(use_unigram)
        self.online_probe = bool(online_probe)
        self.probe_refit_every = max(1, int(probe_refit_every))

    def describe(self):
        return {"name": self.name, "batch_size": self.batch_size, "max_candidates": self.max_candidates,
                "noisy_max_candidates": self.noisy_max_candidates, "match_tol": self.match_tol, "accept_ratio": self.accept_ratio, "probe_tokens": self.probe_tokens,
                "surrogate": self.surrogate, "metric": self.metric, "lm_map": self.lm_map}

    # -- preparation --------------------------------------------------------------------------
    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        lm = ctx.lm
        if not lm.is_causal_lm:
            raise ConfigError(f"white-box inversion needs a causal LM (left-to-right); {lm.name!r} is a "
                             f"{lm.family} encoder")
        # The attacker's own copy of the stages: its hooks never touch the victim's device stage.
        self.dev, self.srv = split_model(lm, [ctx.cut])
        # Kerckhoffs: with `surrogate` the candidates go through the attacker's own copy of the defense's
        # deterministic part (a trained adapter with its own secret; identity for noise); with
        # metric=fisher distances weigh each dimension by how much the server half's output depends on it.
        self._post = ctx.defense.deterministic if self.surrogate and ctx.defense is not None else None
        self._weights = None
        metric = self.metric
        if metric == "auto":
            metric = "fisher" if getattr(ctx.defense, "name", None) in FISHER_DEFENSES else "l2"
        self.metric_used = metric
        if metric == "fisher":
            from splitinfer.privacy.trained import server_fisher

            w = server_fisher(lm, ctx.cut).sqrt()
            self._weights = w / w.pow(2).mean().sqrt().clamp_min(1e-20)
        self.emb = embedding_matrix(lm)
        self.emb_sq = self.emb.pow(2).sum(-1)
        tok = lm.tokenizer
        self.specials = sorted(set(tok.all_special_ids)) if tok is not None else []
        t0 = time.perf_counter()
        say(log, "whitebox cut %d: fitting the ranking probe on %d of the attacker's own tokens", ctx.cut,
            self.probe_tokens)
        self._fit_probe(ctx)
        self._fit_first_position(ctx)
        self.start_logp = self._start_logp(lm)
        self.start_prior = None if self.start_logp is None else torch.argsort(self.start_logp, descending=True)
        self.map_coef = self._calibrate_map(ctx) if self.lm_map and not ctx.noiseless else None
        # Unigram order of the public auxiliary text: cheap, and it knows which byte-level pieces
        # Japanese (or any script the LM prior handles poorly) is made of.
        counts = torch.zeros(self.emb.shape[0], dtype=torch.long)
        for ids in ctx.aux_ids:
            counts += torch.bincount(ids.reshape(-1).clamp(0, self.emb.shape[0] - 1), minlength=self.emb.shape[0])
        self.unigram_order = torch.argsort(counts, descending=True, stable=True)[: int((counts > 0).sum())]
        self.prepare_seconds = time.perf_counter() - t0
        say(log, "whitebox cut %d: probe ready in %.1f s", ctx.cut, self.prepare_seconds)

    @torch.no_grad()
    def _fit_first_position(self, ctx: AttackContext) -> None:
        """Row 0 has no context (and in most LMs a huge attention-sink norm), so it gets its own probe,
        fit on random single tokens."""
        g = torch.Generator().manual_seed(ctx.seed + 992)
        ids = torch.randint(0, self.emb.shape[0], (self.first_probe_tokens, 1), generator=g)
        outs = [ctx.observe(ids[i: i + 64]) for i in range(0, len(ids), 64) if not ctx.out_of_time()]
        if not outs:
            self.probe0 = None
            return
        x = self._features(torch.cat(outs)[:, 0]).double()
        t = self.emb[ids[: len(x), 0]].double()
        reg = torch.eye(x.shape[1], dtype=torch.float64) * self.probe_ridge * float((x * x).sum(0)[:-1].mean())
        reg[-1, -1] = 0.0
        self.probe0 = torch.linalg.solve(x.T @ x + reg, x.T @ t).float()

    @torch.no_grad()
    def _calibrate_map(self, ctx: AttackContext, tokens: int = 512) -> float | None:
        """H / (2 m) for the MAP choice: m is the median squared distance (in the attack's metric) between
        the right token's candidate output and the payload row, on the attacker's own public text through
        its own defense copy; a secret adapter's mismatch is measured against a second secret of the
        attacker's own (its surrogate would match its own payloads exactly)."""
        seqs, n = [], 0
        for ids in ctx.aux_ids:
            if n >= tokens or ctx.out_of_time():
                break
            if ids.shape[1] >= 2:
                seqs.append(ids[:, :64])
                n += seqs[-1].shape[1] - 1
        if not seqs:
            return None
        other = None
        if getattr(ctx.defense, "adapter", None) is not None:  # a secret: the attacker's second copy
            other = ctx.defense.with_seed(ctx.seed + 7777)
        sq = []
        for ids in seqs:
            clean = self.dev(ids)
            y = ctx.observe(ids) if other is None else other.deterministic(clean)
            sq.append(self._distance(self._through(clean)[0, 1:].float(), y[0, 1:].float()).pow(2))
        m = float(torch.cat(sq).median())
        if not m > 0:
            return None
        coef = self.emb.shape[1] / (2 * m)
        say(log, "whitebox cut %d: MAP choice calibrated on %d own tokens (median squared distance %.3g)",
            ctx.cut, n, m)
        return coef

    @torch.no_grad()
    def _start_logp(self, lm) -> torch.Tensor | None:
        """What users' messages start with: the model's next-token log-probabilities right after the chat
        template's user header (the attacker knows the template); None without a tokenizer."""
        tok = lm.tokenizer
        if tok is None:
            return None
        try:
            if getattr(tok, "chat_template", None):
                marker = "\u2063"
                rendered = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
                header = rendered[: rendered.index(marker)]
            else:
                header = tok.bos_token or tok.eos_token or "\n"
            ids = tok(header, add_special_tokens=False, return_tensors="pt")["input_ids"]
        except (ValueError, TypeError, KeyError):
            return None
        if ids.shape[1] == 0:
            return None
        return torch.log_softmax(lm.model(ids).logits[0, -1].float(), -1)

    @torch.no_grad()
    def _fit_probe(self, ctx: AttackContext) -> None:
        """Ridge map payload row (RMS-normalised) -> input embedding, from the attacker's own queries."""
        g = torch.Generator().manual_seed(ctx.seed + 991)
        v, h = self.emb.shape
        seqs, n = [], 0
        sources = ctx.aux_ids or [torch.randint(0, v, (1, 64), generator=g) for _ in range(64)]
        for ids in sources:
            if n >= self.probe_tokens:
                break
            ids = ids[:, :64].clone()
            if ids.shape[1] < 2:
                continue
            swap = torch.rand(ids.shape, generator=g) < 0.5
            swap[:, 0] = False
            ids[swap] = torch.randint(0, v, (int(swap.sum()),), generator=g)
            seqs.append(ids)
            n += ids.shape[1] - 1
        h1 = h + 1  # features: RMS-normalised row plus a bias
        self._gram = torch.zeros(h1, h1, dtype=torch.float64)
        self._cross = torch.zeros(h1, h, dtype=torch.float64)
        self._count = 0
        for ids in bar(seqs, desc="whitebox probe", unit="seq", leave=False):
            if ctx.out_of_time():
                break
            y = ctx.observe(ids)[0, 1:]  # row 0 is an attention sink with huge norm: left out
            self._accumulate(y, self.emb[ids[0, 1:]])
        self._solve()

    def _features(self, y: torch.Tensor) -> torch.Tensor:
        y = _rms_normalise(y.float())
        return torch.cat([y, torch.ones(*y.shape[:-1], 1)], -1)

    def _accumulate(self, outputs: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Add (device output, input embedding) pairs to the probe's normal equations. Every batch the
        attack verifies yields such pairs in real contexts for free, so the probe keeps improving."""
        x = self._features(outputs).double()
        self._gram += x.T @ x
        self._cross += x.T @ embeddings.double()
        self._count += len(x)

    def _solve(self) -> None:
        if self._count == 0:
            self.probe = None
            return
        h1 = self._gram.shape[0]
        ridge = self.probe_ridge * float(self._gram.diagonal()[:-1].mean())
        reg = torch.eye(h1, dtype=torch.float64) * ridge
        reg[-1, -1] = 0.0
        self.probe = torch.linalg.solve(self._gram + reg, self._cross).float()

    # -- the three rankings -------------------------------------------------------------------
    def _probe_order(self, y: torch.Tensor, first: bool = False) -> torch.Tensor | None:
        probe = self.probe0 if first else self.probe
        if probe is None:
            return None
        pred = self._features(y) @ probe
        self._probe_pred = pred
        return torch.argsort(self.emb_sq - 2 * self.emb @ pred)

    def _gradient_scores(self, cache: KVCache, y: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """First-order change of ||f(e) - y||^2 when the input embedding e moves to each E_v."""
        e = at.detach().clone()[None, None].requires_grad_(True)
        self.dev.embedding_hook = lambda _: e
        try:
            with torch.enable_grad():
                out = self._through(self.dev(torch.zeros(1, 1, dtype=torch.long), cache=_expanded(cache, 1)))
                loss = self._distance(out[0, 0], y).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, e)
        finally:
            self.dev.embedding_hook = None
        return self.emb @ grad[0, 0]

    @torch.no_grad()
    def _verify(self, cache: KVCache, cand: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.dev(cand[:, None], cache=_expanded(cache, len(cand)))
        if self.online_probe:
            self._accumulate(out[:, 0], self.emb[cand])
        return self._distance(self._through(out)[:, 0], y)

    def _through(self, out: torch.Tensor) -> torch.Tensor:
        """The attacker's own copy of the defense's deterministic part (surrogate), else the identity."""
        return out if self._post is None else self._post(out)

    def _distance(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = out - y
        if self._weights is not None:
            d = d * self._weights
        return d.norm(dim=-1)

    def _extra_orders(self, i: int) -> list[torch.Tensor]:
        """More candidate rankings for position i (the hybrid attack adds its inverter's)."""
        return []

    # -- inversion ----------------------------------------------------------------------------
    def invert(self, payload: torch.Tensor, deadline: float | None = None) -> Inversion:
        with bar(total=payload.shape[1], desc="whitebox tokens", unit="tok", leave=False) as progress:
            return self._invert(payload, deadline, progress)

    def _invert(self, payload: torch.Tensor, deadline: float | None, progress) -> Inversion:
        t_start = heartbeat = time.perf_counter()
        payload = payload.float()
        steps = payload.shape[1]
        v = self.emb.shape[0]
        rec = torch.full((steps,), -1, dtype=torch.long)
        cache = self.dev.new_cache()
        srv_cache = self.srv.new_cache()
        prior, logp = self.start_prior, self.start_logp
        verified_positions = candidates = 0
        match_dists: list[float] = []
        limit = self.max_candidates
        if limit is None and not self.ctx.noiseless:
            limit = self.noisy_max_candidates
        limit = v if limit is None else min(v, limit)
        specials = torch.tensor(self.specials, dtype=torch.long)
        for i in range(steps):
            if deadline is not None and time.perf_counter() > deadline:
                return Inversion(rec, complete=False, seconds=time.perf_counter() - t_start,
                                 verified=verified_positions, candidates=candidates)
            y = payload[0, i]
            if self.online_probe and i % self.probe_refit_every == 0:
                self._solve()
            scale = self._distance(y, torch.zeros_like(y)).clamp_min(1e-12)
            tried = torch.zeros(v, dtype=torch.bool)
            dist = torch.full((v,), float("inf"))
            self._probe_pred = None
            orders = self._extra_orders(i) + [o for o in (self._probe_order(y, first=i == 0), prior) if o is not None]
            if self.use_unigram and (i > 0 or len(self.unigram_order)):
                orders.append(_first_occurrences(torch.cat([rec[:i].flip(0), self.unigram_order])))
            cursors = [0] * len(orders)
            grad_at = self._probe_pred
            if grad_at is None:
                grad_at = self.emb.mean(0)
            accepted, rnd = False, 0
            while not accepted and int(tried.sum()) < limit:
                # Round 0 checks only the top few of the cheap rankings (usually enough); later rounds
                # add the gradient ranking and the special tokens and grow geometrically.
                first = rnd == 0 and bool(orders)
                k = self.first_round if first else min(self.batch_size * 2 ** (rnd - 1), self.max_batch_size)
                use_grad = self.use_gradient and not first
                per_list = max(1, k // (len(orders) + int(use_grad)))
                picks = [specials] if rnd == 1 and len(specials) else []
                for j, order in enumerate(orders):
                    take, got = [], 0
                    while got < per_list and cursors[j] < len(order):
                        chunk = order[cursors[j]: cursors[j] + per_list - got]
                        cursors[j] += len(chunk)
                        chunk = chunk[~tried[chunk]]
                        take.append(chunk)
                        got += len(chunk)
                    picks += take
                if use_grad or not orders:
                    scores = self._gradient_scores(cache, y, grad_at) if use_grad else torch.zeros(v)
                    scores = scores.masked_fill(tried, float("inf"))
                    picks.append(torch.topk(scores, min(per_list, int((~tried).sum())), largest=False).indices)
                cand = torch.unique(torch.cat(picks)) if picks else torch.empty(0, dtype=torch.long)
                cand = cand[~tried[cand]][: max(0, limit - int(tried.sum()))]
                if len(cand) == 0:
                    break
                dist[cand] = self._verify(cache, cand, y)
                tried[cand] = True
                candidates += len(cand)
                two = torch.topk(dist, 2, largest=False)
                best, second = float(two.values[0]), float(two.values[1])
                grad_at = self.emb[int(two.indices[0])]
                accepted = best <= self.match_tol * float(scale) or (
                    not self.ctx.noiseless and best <= self.accept_ratio * second)
                rnd += 1
                if deadline is not None and time.perf_counter() > deadline and not accepted:
                    break
            token = int(torch.argmin(dist))
            if self.map_coef is not None and logp is not None:
                chosen = map_choice(dist, logp, self.map_coef)
                accepted = accepted and chosen == token
                token = chosen
            rec[i] = token
            log.debug("position %d: token %d after %d candidates in %d rounds (best %.2e of |y|, accepted=%s)",
                      i, token, int(tried.sum()), rnd, float(dist[token] / scale), accepted)
            verified_positions += int(accepted)
            match_dists.append(float(dist[token] / scale))
            progress.update(1)
            if time.perf_counter() - heartbeat > HEARTBEAT_S and progress.disable:
                heartbeat = time.perf_counter()
                done, spent = i + 1, heartbeat - t_start
                say(log, "whitebox: %d/%d tokens of this prompt in %.0f s (about %.0f s left)", done, steps, spent,
                    spent / done * (steps - done))
            with torch.no_grad():
                h = self.dev(torch.tensor([[token]]), cache=cache)
                if self.use_lm_prior and i + 1 < steps:
                    logits = self.srv(h, cache=srv_cache)[0, -1].float()
                    prior = torch.argsort(logits, descending=True)
                    logp = torch.log_softmax(logits, -1)
        return Inversion(rec, complete=True, seconds=time.perf_counter() - t_start,
                         verified=verified_positions, candidates=candidates,
                         match_dist=float(torch.tensor(match_dists).median()) if match_dists else float("nan"))


def map_choice(dist: torch.Tensor, logp: torch.Tensor, coef: float) -> int:
    """The verified candidate (finite `dist`) with the highest posterior: argmin coef x d^2 - log p."""
    score = coef * dist.double().pow(2) - logp.double()
    score[~torch.isfinite(dist)] = float("inf")
    return int(torch.argmin(score))
