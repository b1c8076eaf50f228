"""The hidden-state alignment attack on secret channel permutations (`secret_permutation`).

A permutation of the residual stream's channels keeps each channel's statistics: its mean, spread and
quantiles over many tokens are the public model's, only in another order (the weakness that breaks
permutation-based obfuscation, arXiv 2505.18332). An honest-but-curious server that knows the defense
(Kerckhoffs: the kind, not the secret) recovers the permutation from the device's traffic and then runs the
exact white-box attack in the public coordinates:

1. **Statistics alignment** (unpaired). Per channel: mean, standard deviation and the 5/25/50/75/95 %
   quantiles over the rows of `ctx.traffic()` (payloads of the same device's other requests: the server
   sees them, never their text), and the same over the public device stage's output on the attacker's own
   requests of the same kind (auxiliary-template Faker requests, in the chat template when the victims use
   it). A linear assignment (Hungarian) between the two sets of channel signatures gives a first estimate.
2. **Paired refinement.** The white-box search (`whitebox.py`, nearest match: the first estimate leaves a few
   channels swapped) inverts the first `refine_tokens` rows of `refine_prompts` traffic payloads in the
   estimated coordinates; the public device stage's output on the recovered tokens is then a paired sample,
   and a second assignment on each channel's column of values fixes the rest (re-matched on the rows the
   estimate already reproduces well, i.e. whose tokens were right). Repeated until at least 8 traffic rows
   are reproduced — to float rounding, or behind a lossy codec within 3x the codec's own error, which the
   attacker measures on its requests; one misplaced channel leaves no row reproduced, so that verifies the
   whole permutation — or the estimate stops changing (`refine_rounds` at most). When some rows are
   reproduced but fewer than 8 (the nearest-match search's ratio test let a wrong token into the others'
   prefixes), one more round inverts with exact acceptance (at most `verify_candidates` per position) on a
   lossless codec.
3. **Inversion.** Each victim payload is un-permuted with the estimate and inverted by the white-box search,
   with exact matching (as without a defense) when the permutation was verified and the codec is lossless;
   otherwise with the white-box search's ratio test.

Reported next to the leakage: `verified` (1 when the permutation was verified as above), `rows_reproduced`
(share of the last round's refinement rows reproduced; rows after a wrongly recovered token are not, so it
need not reach 1), `reproduce_tol` (the relative tolerance used), `channels_changed` (channels the refinement moved from the
statistics' estimate), `refine_rounds`, `align_s` (seconds to recover the permutation). Against any other
defense the same steps run (the identity is what they should find).
"""

from __future__ import annotations

import logging
import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import split_model
from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion
from splitinfer.privacy.attacks.whitebox import WhiteBoxInversion
from splitinfer.privacy.progress import say

log = logging.getLogger(__name__)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Paired refinement: rows closer than this (relative) under the current estimate are taken to carry the
# right token and re-matched alone, when there are at least MIN_TRUSTED of them.
TRUST_DIST = 0.2
MIN_TRUSTED = 8


def _int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")
    return value


def channel_signature(rows: list[torch.Tensor]) -> torch.Tensor:
    """(H, 7) per-channel mean, std and quantiles over the rows of payloads (T, H) (row 0, the attention
    sink, left out)."""
    body = torch.cat([r[1:] if r.shape[0] > 1 else r for r in rows]).float()
    q = torch.quantile(body, torch.tensor(QUANTILES), dim=0)
    return torch.cat([body.mean(0)[None], body.std(0)[None], q]).T


def assign(cost: torch.Tensor) -> torch.Tensor:
    """The assignment minimising the summed cost: est[j] = the public channel observed channel j carries."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.double().numpy())
    est = torch.empty(cost.shape[0], dtype=torch.long)
    est[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return est


def align_statistics(observed: list[torch.Tensor], public: list[torch.Tensor]) -> torch.Tensor:
    """Unpaired: match each observed channel's signature to a public channel's (features scaled by their
    spread across the public channels)."""
    so, sp = channel_signature(observed), channel_signature(public)
    scale = sp.std(0, keepdim=True).clamp_min(1e-12)
    return assign(torch.cdist(so / scale, sp / scale))


def align_paired(observed: torch.Tensor, public: torch.Tensor) -> torch.Tensor:
    """Paired: observed (N, H) and public (N, H) rows for the same tokens; match channels by their columns."""
    return assign(torch.cdist(observed.T.double(), public.T.double()).float())


class PermutationRecovery(Attack):
    """Recover a secret channel permutation from the device's traffic, then invert white-box."""

    name = "permutation_recovery"

    def __init__(self, reference_prompts: int = 64, refine_prompts: int = 4, refine_tokens: int = 32,
                 refine_rounds: int = 3, verify_candidates: int = 512, whitebox: dict | None = None) -> None:
        self.reference_prompts = _int("reference_prompts", reference_prompts, 2)
        self.refine_prompts = _int("refine_prompts", refine_prompts, 0)
        self.refine_tokens = _int("refine_tokens", refine_tokens, 2)
        self.refine_rounds = _int("refine_rounds", refine_rounds, 0)
        self.verify_candidates = _int("verify_candidates", verify_candidates, 1)
        if whitebox is not None and not hasattr(whitebox, "items"):
            raise ConfigError(f"whitebox={whitebox!r}: give the white-box search's parameters as a mapping")
        params = {k: v for k, v in dict(whitebox or {}).items() if k != "name"}
        self.whitebox = WhiteBoxInversion(**params)
        self.report: dict[str, float] = {}

    def describe(self):
        return {"name": self.name, "reference_prompts": self.reference_prompts,
                "refine_prompts": self.refine_prompts, "refine_tokens": self.refine_tokens,
                "refine_rounds": self.refine_rounds, "verify_candidates": self.verify_candidates,
                "whitebox": self.whitebox.describe()}

    def _reference_ids(self, ctx: AttackContext) -> list[torch.Tensor]:
        lm = ctx.lm
        if lm.tokenizer is None:  # tiny test models: the auxiliary ids (random tokens)
            return ctx.aux_ids[: self.reference_prompts]
        from splitinfer.privacy.victims import private_prompts

        texts = [t for t, _, _ in private_prompts(self.reference_prompts, seed=ctx.seed + 991, aux=True)]
        ids = [lm.encode_prompt(t, chat=ctx.chat) for t in texts]
        return [x[:, : ctx.max_tokens] if ctx.max_tokens else x for x in ids]

    @torch.no_grad()
    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        if ctx.traffic is None:
            raise ConfigError("permutation_recovery needs the device's traffic (payloads of its other requests): "
                              "run it through evaluate_privacy (or `splitinfer.run attack=permutation_recovery`), "
                              "which gives the attack context `traffic`")
        t0 = time.perf_counter()
        own = ctx.defense
        unfold = getattr(own, "server_entry", None)

        def public(ids: torch.Tensor) -> torch.Tensor:
            """The public coordinates: the attacker's own device (codec included) with its own secret undone."""
            y = ctx.observe(ids)
            return unfold(y) if unfold is not None else y

        traffic = [y[0].float() for y in ctx.traffic()]
        ref_ids = self._reference_ids(ctx)
        reference = [public(ids)[0].float() for ids in ref_ids]
        # A row counts as reproduced below the white-box's exact-match tolerance, or, behind a lossy codec,
        # below 3x the codec's own error (measured on the attacker's requests: codec path vs device output).
        self._tol = self.whitebox.match_tol
        if not ctx.codec_lossless:
            dev = split_model(ctx.lm, [ctx.cut])[0]
            errs = torch.cat([self._row_dist(r, dev(ids)[0].float(), torch.arange(r.shape[-1]))
                              for r, ids in zip(reference[:8], ref_ids[:8], strict=True)])
            self._tol = max(self._tol, 3.0 * float(errs.median()))
        est = align_statistics(traffic, reference)
        first = est.clone()
        inner = AttackContext(lm=ctx.lm, cut=ctx.cut, observe=public, aux_ids=ctx.aux_ids, seed=ctx.seed,
                              deadline=ctx.deadline, noiseless=False, defense=None, chat=ctx.chat,
                              max_tokens=ctx.max_tokens)
        self.whitebox.prepare(inner)
        rounds, exact, verified, exact_round = 0, float("nan"), False, False
        pieces = [y[: self.refine_tokens] for y in traffic[: self.refine_prompts]]
        cap = self.whitebox.max_candidates
        for rounds in range(1, self.refine_rounds + 2):
            if not pieces or ctx.out_of_time():
                rounds -= 1
                break
            # The last round may be an exact one (see below): exact acceptance, at most verify_candidates.
            inner.noiseless = exact_round
            self.whitebox.max_candidates = self.verify_candidates if exact_round else cap
            obs, pub = [], []
            for y in pieces:
                inv = self.whitebox.invert(self._unpermute(y[None], est), ctx.deadline)
                if not inv.complete:
                    break
                obs.append(y)
                pub.append(public(inv.ids[None].clamp_min(0))[0].float())
            if not obs:
                break
            obs_rows, pub_rows = torch.cat(obs), torch.cat(pub)
            new = align_paired(obs_rows, pub_rows)
            for _ in range(3):  # re-match on the rows the estimate already reproduces well (right tokens)
                good = self._row_dist(obs_rows, pub_rows, new) < TRUST_DIST
                if int(good.sum()) < MIN_TRUSTED or bool(good.all()):
                    break
                again = align_paired(obs_rows[good], pub_rows[good])
                if torch.equal(again, new):
                    break
                new = again
            exact, hits = self._rows_reproduced(obs, pub, new)
            say(log, "permutation_recovery cut %d: round %d moved %d channels; %.0f %% of %d traffic rows "
                "reproduced (relative distance < %.1e)", ctx.cut, rounds, int((new != est).sum()), 100 * exact,
                sum(len(o) for o in obs), self._tol)
            changed = bool((new != est).any())
            est = new
            # A single misplaced channel leaves no row reproduced (swapping two channels moves a row by ~0.1 of
            # its norm); reproduced rows mean every channel is in place (and the tokens before them were
            # right): the estimate is the permutation.
            verified = hits >= MIN_TRUSTED
            if verified or exact_round:
                break
            if hits and ctx.codec_lossless:
                # Some rows reproduced, too few to verify: the nearest-match search let a wrong token into
                # their prefixes (the ratio test accepts one that is merely much closer than the next). One
                # more round with exact acceptance reproduces every row whose prefix is right.
                exact_round = True
                continue
            if not changed or rounds >= self.refine_rounds:
                break
        self.whitebox.max_candidates = cap
        self.estimate = est
        # The attacker accepts only exact matches when the aligned traffic is reproduced bit for bit
        # (the payload is then the public device output, as without a defense).
        inner.noiseless = bool(verified and ctx.codec_lossless)
        self.report = {"rows_reproduced": exact, "verified": float(verified), "reproduce_tol": self._tol,
                       "channels_changed": float((est != first).sum()),
                       "refine_rounds": float(rounds), "align_s": time.perf_counter() - t0}
        say(log, "permutation_recovery cut %d: permutation estimated in %.1f s (%d rounds; exact matching %s)",
            ctx.cut, self.report["align_s"], rounds, "on" if inner.noiseless else "off")

    @staticmethod
    def _unpermute(payload: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        """Payload channel j carries public channel est[j]: put it back there."""
        out = torch.empty_like(payload)
        out[..., est] = payload
        return out

    @classmethod
    def _row_dist(cls, obs: torch.Tensor, pub: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        """Each row's distance to its public counterpart under `est`, relative to the row's norm."""
        return (cls._unpermute(obs, est) - pub).norm(dim=-1) / pub.norm(dim=-1).clamp_min(1e-12)

    def _rows_reproduced(self, obs, pub, est) -> tuple[float, int]:
        """Share and count of rows reproduced (relative distance below the tolerance set in `prepare`)."""
        d = self._row_dist(torch.cat(obs), torch.cat(pub), est)
        hits = int((d < self._tol).sum())
        return (hits / len(d) if len(d) else float("nan")), hits

    def invert(self, payload: torch.Tensor, deadline: float | None = None) -> Inversion:
        return self.whitebox.invert(self._unpermute(payload.float(), self.estimate), deadline)
