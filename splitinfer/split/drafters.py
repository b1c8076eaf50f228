"""Drafters for speculative split decoding: cheap guesses of the next tokens, made on the device.

    drafter = build_drafter("ngram")                      # prompt lookup over the prompt and the text so far
    drafter = build_drafter("early_exit", lm=lm, cut=15)  # final norm + LM head + a fitted adapter at the cut

A drafter is deterministic (it proposes tokens, not a distribution), so the server's speculative sampling
rule is exact with draft_p = 1 (see `splitinfer.split.server.accept_draft`). Two kinds:
- context drafters (`uses_hidden = False`) propose from token ids alone: `propose(context, gamma)`;
- hidden drafters (`uses_hidden = True`) read the device stage's output at the cut: `from_hidden(h)`,
  so drafting γ tokens runs the device stage γ times (the hidden states are the ones sent for verifying).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import cache_key

log = logging.getLogger(__name__)

DRAFTERS = ("ngram", "early_exit")


class NGramDrafter:
    """Prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`): find the latest earlier
    occurrence of the last n tokens (n = max_ngram .. min_ngram) in the prompt and the text so far and
    propose what followed it. Free to run, strong when the answer copies its input (summarise, rewrite,
    fix this code); proposes nothing when there is no match (the step is then a plain split step)."""

    name = "ngram"
    uses_hidden = False

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram <= 16):
            raise ConfigError(f"ngram sizes min={min_ngram!r}, max={max_ngram!r}: need 1 <= min <= max <= 16")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def start(self, prompt_ids: list[int]) -> None:
        pass

    def propose(self, context: list[int], gamma: int) -> list[int]:
        """Up to `gamma` tokens that followed the latest earlier match of the context's last n-gram."""
        if gamma < 1:
            return []
        n_ctx = len(context)
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            tail = context[n_ctx - n:]
            for s in range(n_ctx - n - 1, -1, -1):  # latest match first, never the tail itself
                if context[s:s + n] == tail:
                    follow = context[s + n:s + n + gamma]
                    if follow:
                        return list(follow)
        return []


@dataclass(frozen=True)
class AdapterSpec:
    """How an early-exit adapter is fitted (part of its cache key)."""

    source: str = "pydoc"
    tokens: int = 4096
    window: int = 128
    ridge: float = 1e-2
    seed: int = 0
    version: int = 2

    def digest(self) -> str:
        return cache_key(self.__dict__, 12)


class EarlyExitDrafter:
    """The model's own final norm and LM head on the device stage's output at the cut, through a linear
    adapter fitted by least squares (ridge) to map norm(h_cut) to the model's final normed hidden state on
    public text (LayerSkip/Medusa-style early exit). `adapter=None` is the bare logit lens."""

    name = "early_exit"
    uses_hidden = True

    def __init__(self, lm, cut: int, adapter: tuple[torch.Tensor, torch.Tensor] | MLPAdapter | None = None) -> None:
        from splitinfer.models import adapters

        parts = adapters.decoder_parts(lm.model)
        self.norm, self.head, self.config = parts.norm, parts.head, lm.config
        self.cut = cut
        self.module = adapter if isinstance(adapter, MLPAdapter) else None
        self.weight, self.bias = adapter if adapter is not None and self.module is None else (None, None)
        if adapter is None:
            self.name = "logit_lens"
        elif self.module is not None:
            self.name = "early_exit_mlp"

    def start(self, prompt_ids: list[int]) -> None:
        pass

    @torch.no_grad()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Draft logits for hidden states (..., H) at the cut."""
        from splitinfer.models import adapters

        z = self.norm(h.to(torch.float32))
        if self.module is not None:
            z = self.module(z)
        elif self.weight is not None:
            z = z @ self.weight + self.bias
        return adapters.finish_logits(self.config, self.head(z))

    def from_hidden(self, h: torch.Tensor) -> int:
        """The drafted next token after the position whose cut hidden state is `h` (1, H) or (H,)."""
        return int(self.logits(h.reshape(-1)).argmax())


def _training_ids(lm, spec: AdapterSpec) -> torch.Tensor:
    from splitinfer.data import load_texts, tokenize

    if spec.source != "pydoc":
        raise ConfigError(f"adapter source {spec.source!r}: only 'pydoc' (public text shipped with Python)")
    texts = load_texts("pydoc")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(spec.seed)).tolist()
    stream: list[int] = []
    for i in order:
        stream.extend(tokenize(lm, texts[i]))
        if len(stream) >= spec.tokens:
            break
    n = len(stream) // spec.window
    if n == 0:
        raise ConfigError(f"pydoc gave {len(stream)} tokens, fewer than one window of {spec.window}")
    return torch.tensor(stream[: n * spec.window]).reshape(n, spec.window)


class _Stop(Exception):
    pass


@torch.no_grad()
def cuts_and_final_hidden(lm, cuts, ids: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """({cut: norm(h_cut)}, final normed hidden) for token windows `ids` (N, T), each (N*T, H), in one pass
    through the split path's own stages (a device stage's output is exactly what its drafter sees). The LM
    head is skipped (it is not needed and costs as much as several layers)."""
    from splitinfer.models import adapters, split_model

    cuts = sorted(set(int(c) for c in cuts))
    stages = split_model(lm, [c for c in cuts if c < lm.num_layers])
    norm = adapters.decoder_parts(lm.model).norm
    captured: list[torch.Tensor] = []

    def grab(mod, inp, out):
        captured.append(out.detach())
        raise _Stop

    xs: dict[int, list[torch.Tensor]] = {c: [] for c in cuts}
    ys = []
    for row in ids:
        h = row[None]
        for stage in stages[:-1]:
            h = stage(h)
            xs[stage.end_layer].append(norm(h)[0].float())
        hook = norm.register_forward_hook(grab)
        try:
            stages[-1](h)
        except _Stop:
            pass
        finally:
            hook.remove()
        ys.append(captured.pop()[0].float())
        if lm.num_layers in xs:
            xs[lm.num_layers].append(ys[-1])
    return {c: torch.cat(v) for c, v in xs.items()}, torch.cat(ys)


def fit_adapter(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares y ≈ x @ W + b (float64 normal equations); returns float32 (W, b)."""
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)
    xc, yc = xd - mx, yd - my
    gram = xc.T @ xc
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc)
    b = my - mx @ w
    return w.float(), b.float()


def adapter_path(lm, cut: int, spec: AdapterSpec) -> Path:
    from splitinfer.models import cache_root

    return cache_root() / "drafters" / f"{lm.fingerprint}-cut{cut}-early_exit-{spec.digest()}.safetensors"


def load_or_fit_adapter(lm, cut: int, spec: AdapterSpec | None = None, *,
                        ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The early-exit adapter for (model, cut), fitted once on public text and cached under
    cache_root()/drafters keyed by the model's fingerprint, the cut and the fitting spec. `ids` fits on
    the given token windows instead (not cached)."""
    return fit_adapters(lm, [cut], spec, ids=ids)[cut]


def fit_adapters(lm, cuts, spec: AdapterSpec | None = None, *,
                 ids: torch.Tensor | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Early-exit adapters for several cuts: cached ones are loaded, the others fitted in one shared pass."""
    from safetensors.torch import load_file, save_file

    spec = spec or AdapterSpec()
    for cut in cuts:
        if not isinstance(cut, int) or not 1 <= cut <= lm.num_layers:
            raise ConfigError(f"early-exit drafter at cut={cut!r}: needs an int 1 <= cut <= {lm.num_layers}")
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if ids is None:
        for cut in cuts:
            path = adapter_path(lm, cut, spec)
            if path.is_file():
                t = load_file(str(path))
                out[cut] = (t["weight"], t["bias"])
    todo = [c for c in cuts if c not in out]
    if not todo:
        return out
    t0 = time.perf_counter()
    train = ids if ids is not None else _training_ids(lm, spec)
    xs, y = cuts_and_final_hidden(lm, todo, train)
    for cut in todo:
        w, b = fit_adapter(xs[cut], y, spec.ridge)
        out[cut] = (w, b)
        if ids is None:
            path = adapter_path(lm, cut, spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"weight": w.contiguous(), "bias": b.contiguous()}, str(tmp))
            tmp.replace(path)
    if ids is None:
        log.info("fitted early-exit adapters for cuts %s on %d tokens in %.1f s (cached in %s)", todo,
                 y.shape[0], time.perf_counter() - t0, adapter_path(lm, todo[0], spec).parent)
    return out


class MLPAdapter(torch.nn.Module):
    """z = x W + b + GELU(x A + a) B: the ridge map plus a learned residual MLP (B starts at zero, so an
    untrained adapter is the ridge adapter it was initialised from)."""

    def __init__(self, size: int, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(size, size)
        self.up = torch.nn.Linear(size, hidden)
        self.down = torch.nn.Linear(hidden, size)
        torch.nn.init.zeros_(self.down.weight)
        torch.nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.down(torch.nn.functional.gelu(self.up(x)))


@dataclass(frozen=True)
class MLPAdapterSpec:
    """How an MLP early-exit adapter is trained by distillation (part of its cache key). `steps` is fixed
    so the result does not depend on the machine's speed; `max_seconds` only guards a very slow machine
    (the adapter then keeps the steps it reached, and the log says so)."""

    source: str = "pydoc"
    tokens: int = 8192
    window: int = 128
    hidden: int = 512
    steps: int = 200
    batch: int = 128
    lr: float = 1e-3
    top_k: int = 32
    seed: int = 0
    max_seconds: float = 180.0
    version: int = 1

    def digest(self) -> str:
        return cache_key(self.__dict__, 12)


def teacher_top_k(lm, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full model's top-k next-token probabilities and ids for final normed hidden states y (N, H)."""
    from splitinfer.models import adapters

    head = adapters.decoder_parts(lm.model).head
    with torch.no_grad():
        tl, ti = [], []
        for i in range(0, len(y), 1024):
            logp = torch.log_softmax(adapters.finish_logits(lm.config, head(y[i:i + 1024])).float(), -1)
            v, j = logp.topk(k, -1)
            tl.append(v.exp())
            ti.append(j)
    return torch.cat(tl), torch.cat(ti)


def distill_adapter(lm, x: torch.Tensor, y: torch.Tensor, spec: MLPAdapterSpec,
                    init: tuple[torch.Tensor, torch.Tensor] | None = None,
                    teacher: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[MLPAdapter, int]:
    """Train an MLPAdapter so that head(adapter(x)) matches the full model's next-token distribution
    head(y): cross-entropy to the teacher's top-k probabilities (KL up to a constant, on the mass the
    teacher puts there), the student normalised over the whole vocabulary. Returns (adapter, steps run)."""
    from splitinfer.models import adapters

    head = adapters.decoder_parts(lm.model).head
    g = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    tp, tidx = teacher if teacher is not None else teacher_top_k(lm, y, spec.top_k)
    model = MLPAdapter(x.shape[1], spec.hidden)
    if init is not None:
        with torch.no_grad():
            model.linear.weight.copy_(init[0].T)
            model.linear.bias.copy_(init[1])
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.steps)
    t0 = time.perf_counter()
    step = 0
    for step in range(1, spec.steps + 1):
        pick = torch.randint(0, len(x), (spec.batch,), generator=g)
        logits = adapters.finish_logits(lm.config, head(model(x[pick]))).float()
        logq = torch.log_softmax(logits, -1).gather(-1, tidx[pick])
        loss = -(tp[pick] * logq).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if time.perf_counter() - t0 > spec.max_seconds:
            log.warning("MLP adapter: stopped at step %d of %d after %.0f s (max_seconds)", step, spec.steps,
                        time.perf_counter() - t0)
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, step


def mlp_adapter_path(lm, cut: int, spec: MLPAdapterSpec) -> Path:
    from splitinfer.models import cache_root

    return cache_root() / "drafters" / f"{lm.fingerprint}-cut{cut}-early_exit_mlp-{spec.digest()}.safetensors"


def load_or_train_mlp_adapters(lm, cuts, spec: MLPAdapterSpec | None = None, *,
                               ids: torch.Tensor | None = None) -> dict[int, MLPAdapter]:
    """MLP early-exit adapters for `cuts`: cached ones are loaded, the others distilled on public text
    (initialised from the ridge fit on the same text) and cached under cache_root()/drafters keyed by the
    model's fingerprint, the cut and the spec. `ids` trains on the given token windows instead (not cached)."""
    from safetensors.torch import load_file, save_file

    spec = spec or MLPAdapterSpec()
    for cut in cuts:
        if not isinstance(cut, int) or not 1 <= cut <= lm.num_layers:
            raise ConfigError(f"early-exit drafter at cut={cut!r}: needs an int 1 <= cut <= {lm.num_layers}")
    out: dict[int, MLPAdapter] = {}
    if ids is None:
        for cut in cuts:
            path = mlp_adapter_path(lm, cut, spec)
            if path.is_file():
                m = MLPAdapter(lm.hidden_size, spec.hidden)
                m.load_state_dict({k: v for k, v in load_file(str(path)).items() if k != "steps"})
                m.eval().requires_grad_(False)
                out[cut] = m
    todo = [c for c in cuts if c not in out]
    if not todo:
        return out
    train = ids if ids is not None else _training_ids(lm, AdapterSpec(source=spec.source, tokens=spec.tokens,
                                                                      window=spec.window, seed=spec.seed))
    xs, y = cuts_and_final_hidden(lm, todo, train)
    teacher = teacher_top_k(lm, y, spec.top_k)
    for cut in todo:
        t0 = time.perf_counter()
        model, steps = distill_adapter(lm, xs[cut], y, spec, init=fit_adapter(xs[cut], y), teacher=teacher)
        out[cut] = model
        if ids is None and steps < spec.steps:
            log.warning("MLP adapter for cut %d: %d of %d steps within max_seconds; not cached (a faster "
                        "machine will train it fully)", cut, steps, spec.steps)
        elif ids is None:
            path = mlp_adapter_path(lm, cut, spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
            tensors["steps"] = torch.tensor([steps])
            save_file(tensors, str(tmp))
            tmp.replace(path)
            log.info("distilled the MLP early-exit adapter for cut %d: %d steps in %.1f s (cached in %s)", cut,
                     steps, time.perf_counter() - t0, path)
    return out


def build_drafter(name: str, *, lm=None, cut: int | None = None, **kwargs):
    """A drafter by name: 'ngram' (prompt lookup), 'early_exit' (fitted ridge adapter), 'logit_lens' (no
    adapter), 'early_exit_mlp' (MLP adapter distilled on public text)."""
    if name == "ngram":
        return NGramDrafter(**kwargs)
    if name == "early_exit_mlp":
        if lm is None or cut is None:
            raise ConfigError(f"drafter {name!r} needs the model and the cut (lm=..., cut=...)")
        return EarlyExitDrafter(lm, cut, load_or_train_mlp_adapters(lm, [cut], **kwargs)[cut])
    if name in ("early_exit", "logit_lens"):
        if lm is None or cut is None:
            raise ConfigError(f"drafter {name!r} needs the model and the cut (lm=..., cut=...)")
        adapter = load_or_fit_adapter(lm, cut, **kwargs) if name == "early_exit" else None
        return EarlyExitDrafter(lm, cut, adapter)
    from splitinfer.registry import closest

    names = [*DRAFTERS, "logit_lens", "early_exit_mlp"]
    near = closest(name, names)
    raise ConfigError(f"drafter {name!r} is not one of {', '.join(names)}"
                      f"{f' (did you mean {near[0]!r}?)' if near else ''}")
