"""A learned bottleneck codec: a linear encoder on the device, a decoder on the server, fitted per (model, cut).

    codec = build_codec("learned_d160_b4").bind(lm, cut)   # fits (or loads from the cache) on first bind
    enc = codec.encode(h)                                    # EncodedTensor, like every codec
    h2 = codec.decode(enc)                                   # the server's copy must be bound to the same cut

Per token x (hidden size H):
  1. centre and scale per channel (mean mu, std sigma of the public fitting states), then divide by the
     token's RMS r (sent as fp16: 16 bits per token);
  2. z = u @ E: d latent values (E is H x d, initialised with the top-d principal directions);
  3. uniform quantisation of z_i with step delta_i into 2**b levels (clipped; delta_i from z_i's range, or
     one common `step` for all latents, which lets the entropy coder follow the variance), symbols coded with a
     static per-latent-dimension table fitted on the same public text (no tables on the wire), through
     constriction's compiled ANS coder (entropy.encode_columns; header version 2);
  4. the server decodes u' = D(q * delta) (a linear map plus a small residual MLP), x' = r u' sigma + mu.
Tokens whose |u| peak exceeds a fitted threshold (the attention sink) go as fp16 rows, as in the `_tc`
presets. E, D and the MLP are fitted on public pydoc text (the training half of its topics, see
`pydoc_split`): PCA first, then a few minutes of Adam on the task loss, KL(unsplit || split) of the frozen
server half's next-token distribution, through a straight-through quantiser. The fit is cached under
`splitinfer.models.cache_root()/codecs/`, keyed by the model's fingerprint, the cut and the recipe.

The codec must be bound (`bind(lm, cut)`) on both halves before use; a message carries the cut and a short
digest of the fit, and decoding with a codec bound to another cut or fit raises CodecError.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from splitinfer.codecs import entropy, rans
from splitinfer.codecs.base import FORMAT_COMPILED, Codec, check_input, saturate_for, seal
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError

log = logging.getLogger(__name__)
CACHE_VERSION = 2
LEARNED_PREFIX = "learned"
# preset name -> params; `learned_d{d}_b{b}` for the measured points (experiments/codec_rate_distortion)
LEARNED_PRESETS: dict[str, dict[str, Any]] = {
    "learned": {},
    "learned_d96_b3": {"latent": 96, "bits": 3},
    "learned_d160_b4": {"latent": 160, "bits": 4},
    "learned_d320_b4": {"latent": 320, "bits": 4},
    # transform coding: all 576 principal directions, one common step (in units of the normalised value),
    # so the entropy coder spends bits where the variance is (reverse water-filling); ~1 and ~2 bits/value
    "learned_q160": {"latent": 576, "bits": 6, "step": 1.6},
    "learned_q065": {"latent": 576, "bits": 6, "step": 0.65},
}
DEFAULTS: dict[str, Any] = {"latent": 160, "bits": 4, "loss": "kl", "train_budget_s": 90.0, "steps": 400,
                            "fit_seqs": 48, "fit_len": 64, "mlp": 256, "seed": 0, "step": 0.0}
OUTLIER_FACTOR = 8.0  # a token goes as fp16 when its peak |x - mu| / sigma is 8 x the fitting tokens' 99.9 % peak


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise CodecError(f"unknown learned-codec params {unknown}; allowed: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    for k in ("latent", "bits", "steps", "fit_seqs", "fit_len", "mlp", "seed"):
        if type(p[k]) is not int or p[k] < 0:
            raise CodecError(f"learned codec {k}={p[k]!r}: must be an int >= 0")
    if not 1 <= p["bits"] <= 8:
        raise CodecError(f"learned codec bits={p['bits']!r}: must be 1..8 (levels per latent value = 2**bits)")
    if p["latent"] < 1 or p["fit_seqs"] < 1 or p["fit_len"] < 2:
        raise CodecError(f"learned codec needs latent >= 1, fit_seqs >= 1, fit_len >= 2; got {params!r}")
    if p["loss"] not in ("kl", "mse"):
        raise CodecError(f"learned codec loss={p['loss']!r}: must be 'kl' (task loss) or 'mse' (PCA only)")
    st = p["step"]
    if isinstance(st, bool) or not isinstance(st, int | float) or not math.isfinite(st) or st < 0:
        raise CodecError(f"learned codec step={st!r}: must be a finite number >= 0 (0: one range per latent "
                         "over 2**bits levels; > 0: one common quantiser step for every latent)")
    b = p["train_budget_s"]
    if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b < 0:
        raise CodecError(f"learned codec train_budget_s={b!r}: must be a finite number >= 0 (seconds)")
    return p


# ----------------------------------------------------------------------------- public fitting text
def pydoc_split(split: str) -> list[str]:
    """pydoc topics (sorted by name): `train` = 3 of every 4 (what the codec is fitted on), `heldout` = every
    4th (what it is evaluated on, see heldout_corpus)."""
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    return [t for i, t in enumerate(texts) if (i % 4 == 0) == (split == "heldout")]


def _windows(lm, texts: list[str], n: int, seq_len: int, seed: int) -> torch.Tensor:
    """n token windows (n, seq_len) from `texts` in a seeded order (random ids for a model without tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    if lm.tokenizer is None:
        return torch.randint(3, lm.vocab_size, (n, seq_len), generator=g)
    from splitinfer.data import tokenize

    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    stream: list[int] = []
    for i in order:
        stream.extend(tokenize(lm, texts[i]))
        if len(stream) >= 2 * n * seq_len:
            break
    chunks = [stream[s:s + seq_len] for s in range(0, len(stream) - seq_len + 1, seq_len)]
    picked = rng.sample(range(len(chunks)), min(n, len(chunks)))
    return torch.tensor([chunks[i] for i in picked])


def heldout_corpus(lm, num_windows: int = 8, window_tokens: int = 256, seed: int = 0, num_prompts: int = 2,
                   prompt_tokens: int = 32, gen_tokens: int = 17):
    """A splitinfer.data.Corpus sampled like CorpusSpec(source="pydoc") but only from the held-out pydoc
    topics the learned codec never saw."""
    from splitinfer.data import Corpus

    w = _windows(lm, pydoc_split("heldout"), num_windows + num_prompts, max(window_tokens, prompt_tokens), seed)
    windows, prompts = w[:num_windows, :window_tokens], w[num_windows:, :prompt_tokens]
    h = hashlib.sha256(b"pydoc_heldout")
    h.update(windows.numpy().tobytes())
    h.update(prompts.numpy().tobytes())
    return Corpus(windows, prompts, gen_tokens, "pydoc_heldout", h.hexdigest()[:16])


# ----------------------------------------------------------------------------- the fitted parts
class Bottleneck(nn.Module):
    def __init__(self, hidden: int, latent: int, mlp: int) -> None:
        super().__init__()
        self.enc = nn.Linear(hidden, latent, bias=True)
        self.dec = nn.Linear(latent, hidden, bias=True)
        self.mlp = nn.Sequential(nn.Linear(latent, mlp), nn.GELU(), nn.Linear(mlp, hidden)) if mlp else None
        if self.mlp is not None:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        out = self.dec(zq)
        return out + self.mlp(zq) if self.mlp is not None else out


def _cache_dir():
    from splitinfer.models import cache_dir

    return cache_dir("codecs")


def fit_key(fingerprint: str, cut: int, params: dict[str, Any]) -> str:
    body = {"m": fingerprint, "cut": cut, "v": CACHE_VERSION, **params}
    if not body.get("step"):  # step=0 (per-latent ranges) keeps the key it had before `step` existed
        body.pop("step", None)
    from splitinfer.models import cache_key

    return cache_key(body)


class LearnedCodec(Codec):
    """See the module docstring. Build with build_codec("learned_d160_b4", ...), then `bind(lm, cut)`."""

    format_version = FORMAT_COMPILED  # latents coded by the compiled ANS coder (entropy.py) since issue 28

    def __init__(self, name: str, overrides: dict[str, Any]) -> None:
        self.name = name
        self.overrides = dict(overrides)
        self.p = _check_params({**LEARNED_PRESETS.get(name, {}), **overrides})
        self.cut: int | None = None
        self.fingerprint: str | None = None
        self.fit_info: dict[str, Any] = {}

    # -- binding ---------------------------------------------------------------------------------------
    @property
    def bound(self) -> bool:
        return self.cut is not None

    def bind(self, lm, cut: int, *, fit: bool = True) -> LearnedCodec:
        """Fit (or load from the cache) the bottleneck for `lm` at `cut`; returns self. With fit=False
        only a cached fit is loaded (a server never fits on a client's request: that takes minutes)."""
        if type(cut) is not int or not 1 <= cut < lm.num_layers:
            raise CodecError(f"learned codec cut={cut!r}: must be an int in 1..{lm.num_layers - 1}")
        key = fit_key(lm.fingerprint, cut, self.p)
        path = _cache_dir() / f"learned-{key}.pt"
        if path.exists():
            try:  # a file a user may have copied in: tensors and plain values only, never code
                saved = torch.load(path, weights_only=True)
                state, self.fit_info = saved["state"], {**saved["info"], "cached": True}
            except Exception as e:
                raise CodecError(f"cached fit {path} is not a learned-codec fit ({type(e).__name__}: "
                                 f"{str(e)[:200]}); delete it to fit again") from None
        elif not fit:
            raise CodecError(f"learned codec {self.name!r} has no fit for this model at cut {cut} in {path.parent}; "
                             f"fit it once where the server's cache lives (splitinfer generate --cut {cut} "
                             f"--codec {self.name} \"hi\", or codec.bind(lm, {cut})), or copy the device's "
                             f"learned-{key}.pt there")
        else:
            state, info = _fit(lm, cut, self.p)
            torch.save({"state": state, "info": info}, path)
            self.fit_info = {**info, "cached": False}
        self._load(state, lm.hidden_size)
        self.cut, self.fingerprint, self.digest = cut, lm.fingerprint, key[:8]
        return self

    def _load(self, state: dict[str, torch.Tensor], hidden: int) -> None:
        self.net = Bottleneck(hidden, self.p["latent"], self.p["mlp"])
        self.net.load_state_dict(state["net"])
        self.net.requires_grad_(False)
        self.mu, self.sigma, self.delta = state["mu"], state["sigma"], state["delta"]
        self.peak = float(state["peak"])
        self.hidden = hidden
        levels = 1 << self.p["bits"]
        counts = state["counts"].numpy().astype(np.int64)  # (latent, levels)
        freq = rans.freqs_from_counts(counts)  # every level >= 1: nothing is impossible
        self._models, self._probs = entropy.models(freq), entropy.column_probabilities(freq)
        self.levels = levels

    def _need_bound(self, what: str) -> None:
        if not self.bound:
            raise CodecError(f"learned codec {self.name!r} cannot {what} before it is bound to a model and cut: "
                             "call codec.bind(lm, cut) on both the device and the server half (it fits or loads "
                             "the bottleneck for that cut)")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.p, "cut": self.cut, "fit": self.fit_info}

    # -- the maps ----------------------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = (x - self.mu) / self.sigma
        r = u.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
        return u / r, r

    def symbols(self, u: torch.Tensor) -> torch.Tensor:
        half = self.levels // 2
        z = self.net.enc(u) / self.delta
        return (torch.round(z).clamp(-half, half - 1) + half).to(torch.int64)

    def reconstruct(self, sym: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        zq = (sym.float() - self.levels // 2) * self.delta
        return self.net.decode(zq) * r * self.sigma + self.mu

    # -- Codec --------------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> EncodedTensor:
        self._need_bound("encode")
        check_input(x)
        if x.ndim < 1 or x.shape[-1] != self.hidden:
            raise CodecError(f"learned codec bound to hidden size {self.hidden} got shape {list(x.shape)}")
        v = x.detach().float().reshape(-1, self.hidden)
        if not bool(torch.isfinite(v).all()):
            raise CodecError("learned codec encodes finite values only (got NaN or Inf); use a pipeline preset")
        with torch.no_grad():
            u, r = self.normalise(v)
            out = (((v - self.mu) / self.sigma).abs().amax(-1) > OUTLIER_FACTOR * self.peak).nonzero().reshape(-1)
            keep = torch.ones(v.shape[0], dtype=torch.bool)
            keep[out] = False
            sym = self.symbols(u[keep]).numpy().reshape(-1)
        words_arr = entropy.encode_columns(sym.reshape(-1, self.p["latent"]), self._models, self._probs)
        stream, words = words_arr.astype("<u4").tobytes(), int(words_arr.size)
        rows = v[out]
        f32 = bool(rows.numel()) and float(rows.abs().max()) > torch.finfo(torch.float16).max
        meta = {"cut": self.cut, "fit": self.digest, "rows": int(out.numel()), "words": words, "f32": f32}
        buffers = [out.to(torch.int32).numpy().tobytes(), rows.to(torch.float32 if f32 else torch.float16).numpy().tobytes(),
                   r[keep].to(torch.float16).numpy().tobytes(), stream]
        return seal(self._new_header(x, meta), buffers)

    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        self._need_bound("decode")
        shape, in_dtype, meta = self._open(enc)
        if meta.get("cut") != self.cut or meta.get("fit") != self.digest:
            raise CodecError(f"message was coded at cut {meta.get('cut')!r} with fit {meta.get('fit')!r} but this "
                             f"decoder is bound to cut {self.cut} with fit {self.digest!r}: bind both halves with "
                             "the same model, cut and codec params")
        if not shape or shape[-1] != self.hidden:
            raise CodecError(f"header shape {list(shape)} does not end in the bound hidden size {self.hidden}")
        tokens = math.prod(shape[:-1])
        rows, words, f32 = meta.get("rows"), meta.get("words"), meta.get("f32")
        if (type(rows) is not int or not 0 <= rows <= tokens or type(words) is not int or type(f32) is not bool
                or len(enc.buffers) != 4):
            raise CodecError(f"learned codec header meta {meta!r} / {len(enc.buffers)} buffers are malformed")
        b_idx, b_rows, b_r, stream = (memoryview(b).cast("B") for b in enc.buffers)
        kept = tokens - rows
        if b_idx.nbytes != 4 * rows or b_rows.nbytes != (4 if f32 else 2) * rows * self.hidden or b_r.nbytes != 2 * kept:
            raise CodecError("learned codec buffers do not match the header's token counts: truncated or corrupted")
        idx = torch.from_numpy(np.frombuffer(b_idx, dtype=np.int32).astype(np.int64))
        if rows and (int(idx.min()) < 0 or int(idx.max()) >= tokens or idx.unique().numel() != rows):
            raise CodecError("learned codec outlier-row indices are out of range or repeated")
        if stream.nbytes != 4 * words:
            raise CodecError(f"learned codec: ANS stream has {stream.nbytes} bytes, the header announces {words} "
                             "32-bit words: truncated or corrupted")
        sym = entropy.decode_columns(stream, kept, self.p["latent"], self._models, self._probs)
        if sym.size and int(sym.max()) >= self.levels:
            raise CodecError(f"learned codec: a decoded level is >= {self.levels}: corrupted data")
        r = torch.from_numpy(np.frombuffer(b_r, dtype=np.float16).astype(np.float32)).reshape(kept, 1)
        with torch.no_grad():
            rest_h = self.reconstruct(torch.from_numpy(sym).reshape(kept, self.p["latent"]), r)
        out = torch.empty(tokens, self.hidden)
        keep = torch.ones(tokens, dtype=torch.bool)
        keep[idx] = False
        out[keep] = rest_h
        row_t = np.frombuffer(b_rows, dtype=np.float32 if f32 else np.float16).astype(np.float32)
        out[idx] = torch.from_numpy(row_t).reshape(rows, self.hidden)
        want = dtype or in_dtype
        return saturate_for(out, want).to(want).reshape(shape)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.overrides}


# ----------------------------------------------------------------------------- fitting
def _fit(lm, cut: int, p: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from splitinfer.models import split_model

    t0 = time.perf_counter()
    torch.manual_seed(p["seed"])
    dev, srv = split_model(lm, [cut])
    ids = _windows(lm, pydoc_split("train"), p["fit_seqs"], p["fit_len"], p["seed"])
    with torch.no_grad():
        h = torch.cat([dev(ids[i:i + 8]).float() for i in range(0, len(ids), 8)])  # (N, T, H)
    hidden, d, levels = lm.hidden_size, p["latent"], 1 << p["bits"]
    flat = h.reshape(-1, hidden)
    # per-channel stats without the attention sink (row 0 of each window): it goes as an fp16 row
    body = h[:, 1:].reshape(-1, hidden)
    mu, sigma = body.mean(0), body.std(0).clamp_min(1e-6)

    def norm(x):
        u = (x - mu) / sigma
        return u / u.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)

    ub = norm(body)
    peak = float(torch.quantile(((body - mu) / sigma).abs().amax(-1), 0.999))
    outlier = ((flat - mu) / sigma).abs().amax(-1) > OUTLIER_FACTOR * peak
    ub = norm(flat[~outlier])  # what the bottleneck codes: every token not sent as an fp16 row
    net = Bottleneck(hidden, d, p["mlp"])
    dk = min(d, hidden)
    _, _, vt = torch.linalg.svd(ub - ub.mean(0), full_matrices=False)
    with torch.no_grad():
        w = torch.zeros(d, hidden)
        w[:dk] = vt[:dk]
        net.enc.weight.copy_(w)
        net.enc.bias.copy_(-(w @ ub.mean(0)))
        net.dec.weight.copy_(w.T)
        net.dec.bias.copy_(ub.mean(0))
        z = net.enc(ub)
        # quantiser range: the 99.5 % |z_i| (at least a tiny step so unused latents stay finite)
        delta = (2 * torch.quantile(z.abs(), 0.995, dim=0) / levels).clamp_min(1e-4)
        if p["step"] > 0:
            delta = torch.full((d,), float(p["step"]))
    info: dict[str, Any] = {"pca_s": time.perf_counter() - t0, "steps_done": 0, "fit_tokens": int(flat.shape[0]),
                            "fp16_rows": int(outlier.sum())}
    half = levels // 2

    def quant(z):
        zc = torch.round(z / delta).clamp(-half, half - 1) * delta
        return z + (zc - z).detach()  # straight-through

    if p["loss"] == "kl" and p["steps"] > 0 and p["train_budget_s"] > 0:
        with torch.no_grad():
            ref = torch.cat([torch.log_softmax(srv(h[i:i + 8]).float(), -1).half() for i in range(0, len(h), 8)])
        un = norm(flat).reshape(h.shape)
        r = ((h - mu) / sigma).pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(p["seed"] + 1)
        params = [q for q in lm.model.parameters() if q.requires_grad]
        for q in params:
            q.requires_grad_(False)
        t1, kl = time.perf_counter(), float("nan")
        try:
            with torch.enable_grad():
                while info["steps_done"] < p["steps"] and time.perf_counter() - t1 < p["train_budget_s"]:
                    pick = torch.randint(0, len(h), (4,), generator=g)
                    u = un[pick]
                    rec = net.decode(quant(net.enc(u))) * r[pick] * sigma + mu
                    rec = torch.where(outlier.reshape(h.shape[:2])[pick][..., None], h[pick], rec)
                    logp = torch.log_softmax(srv(rec).float(), -1)
                    ref_p = ref[pick].float()
                    loss = (ref_p.exp() * (ref_p - logp)).sum(-1)[:, 1:].mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    info["steps_done"] += 1
                    kl = float(loss.detach())
        finally:
            for q in params:
                q.requires_grad_(True)
        info.update(train_s=time.perf_counter() - t1, final_kl=kl)
    with torch.no_grad():
        z = net.enc(ub) / delta
        sym = (torch.round(z).clamp(-half, half - 1) + half).to(torch.int64)
        counts = torch.stack([torch.bincount(sym[:, i], minlength=levels) for i in range(d)])
        prob = (counts.double() + 1) / (counts.sum(1, keepdim=True).double() + levels)
        info["entropy_bits_per_value"] = float(-(counts * prob.log2()).sum() / ub.shape[0] / hidden)
    info["fit_s"] = time.perf_counter() - t0
    log.info("learned codec d=%d b=%d cut %d: %d KL steps, fit in %.1f s, ~%.3f bits/value on the fitting text",
             d, p["bits"], cut, info["steps_done"], info["fit_s"], info["entropy_bits_per_value"])
    state = {"net": net.state_dict(), "mu": mu, "sigma": sigma, "delta": delta, "peak": torch.tensor(peak),
             "counts": counts}
    return state, info


__all__ = ["LEARNED_PRESETS", "LearnedCodec", "heldout_corpus", "pydoc_split"]
