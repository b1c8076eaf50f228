"""`SplitLM`: an lm-evaluation-harness model whose every forward goes through the split path.

    device stage ─▶ defense ─▶ codec.encode ─▶ link (in process, or a `splitinfer serve` at server=tcp://…)
        ─▶ codec.decode ─▶ server stages ─▶ logits ─▶ lm-eval's scoring

It subclasses lm-eval's own `hf` model (`HFLM`) and keeps its tokenization, chat templates, rolling windows
and `generate_until` bookkeeping, so a split scores exactly what `hf` scores on the same checkpoint; only
the two places where the model runs are replaced: `_loglikelihood_tokens` (teacher-forced scoring through
the split) and `_model_generate` (greedy or sampled split generation). Every request is its own message on
the wire, as a device would send it, so a lossy codec's figure does not depend on how requests were
batched; in process, the device and server stages still run whole batches.

    lm_eval.simple_evaluate(model=SplitLM(cut=15, codec="ec37g_s"), tasks=[...])
    lm_eval.simple_evaluate(model="splitinfer", model_args="cut=15,codec=ec37g_s", ...)  # after importing
                                                                                          # splitinfer.eval
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from splitinfer.errors import ConfigError
from splitinfer.split.scoring import target_logprobs

log = logging.getLogger(__name__)

UNSPLIT = "unsplit"  # cut=unsplit: the whole model in one piece, through the same code (the baseline)


def parse_cuts(cut: Any, num_layers: int) -> list[int] | None:
    """`cut` as lm-eval's model_args give it ("15", 15, "4,8", [4, 8], "unsplit") -> checked cuts, or
    None for the unsplit model."""
    from splitinfer.models import validate_cuts

    if cut is None or (isinstance(cut, str) and cut.strip().lower() in (UNSPLIT, "none", "")):
        return None
    if isinstance(cut, str):
        try:
            cut = [int(c) for c in cut.replace(";", ",").split(",")]
        except ValueError:
            raise ConfigError(f"cut={cut!r}: give a layer index (e.g. cut=15), several as 4;8, or cut=unsplit") from None
    cuts = cut if isinstance(cut, list | tuple) else [cut]
    try:
        return validate_cuts([int(c) for c in cuts], num_layers)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cut={cut!r}: {e}") from None


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")) else v


class _Stop(Exception):  # noqa: N818 - control flow, never escapes this module
    """Raised from a generation's token callback once a stop sequence appeared."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)


@register_model("splitinfer")
class SplitLM(HFLM):
    """lm-eval's `hf` model with the split path underneath: `model` (a bundled name, a local directory or
    .gguf, or a loaded `LoadedModel`), `cut` (or `unsplit`), `codec` (a preset name, `none` = raw fp32),
    `defense` (a name or a built defense), `server` (tcp://HOST:PORT of a running `splitinfer serve`; None
    runs the server half in this process), `batch_size`, `max_length`, `seed`, `timeout_s`."""

    def __init__(self, model: Any = "smollm2-135m-instruct", cut: Any = 15, codec: Any = "none",
                 defense: Any = None, server: str | None = None, batch_size: int | str = 1,
                 max_length: int | None = None, timeout_s: float = 60.0, curve_keys: str | None = None,
                 **kwargs: Any) -> None:
        from splitinfer.models import LoadedModel, load_model

        lm = model if isinstance(model, LoadedModel) else load_model(str(model))
        if not lm.is_causal_lm or lm.tokenizer is None:
            raise ConfigError(f"model {lm.name!r}: lm-eval tasks need a causal LM with a tokenizer")
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            raise ConfigError(f"batch_size={batch_size!r}: give a number (auto-detection is for GPUs)")
        batch_size = 1 if batch_size is None else batch_size  # simple_evaluate passes None when not given
        hf_log = logging.getLogger("lm_eval.models.huggingface")
        level = hf_log.level
        hf_log.setLevel(logging.ERROR)  # its warnings about a pre-loaded model are what we mean to do
        try:
            super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=int(batch_size),
                             max_length=None if max_length is None else int(max_length), **kwargs)
        finally:
            hf_log.setLevel(level)
        self.lm = lm
        self.cuts = parse_cuts(_none(cut), lm.num_layers)
        self.codec = _none(codec) or "none"  # a preset name, a spec dict or a built codec (sweeps pass one)
        self.codec_name = self.codec if isinstance(self.codec, str) else getattr(self.codec, "name", str(self.codec))
        self.server = _none(server)
        self.timeout_s = float(timeout_s)
        self.curve_keys = curve_keys
        self.defense = _none(defense)
        if self.server is not None and self.cuts is None:
            raise ConfigError(f"server={self.server!r} with cut=unsplit: a served half needs a cut")
        self._device_half, self._server_half, self._link = self._build_path()
        self._generators: dict[Any, Any] = {}
        self.traffic_bytes_up = 0  # codec bytes the device sent, over every request (what the link counted)
        self.scored_tokens = 0  # positions those messages carried

    # -- the split path ------------------------------------------------------------------------------
    def _build_path(self):
        """(device half, server half or None, link or None); all None for the unsplit baseline."""
        if self.cuts is None:
            return None, None, None
        from splitinfer.split import InProcessLink, split_pair

        if self.server is None:
            defense = self.defense
            if isinstance(defense, str | dict):
                from splitinfer.privacy.defenses import build_defense

                defense = build_defense(defense)
            device, server = split_pair(self.lm, self.cuts, codec=self.codec, defense=defense)
            return device, server, InProcessLink(server)
        from splitinfer.transport.client import remote_generator

        gen = remote_generator(self.lm, self.cuts, self.server, codec=self.codec, defense=self.defense,
                               timeout_s=self.timeout_s, curve_keys=self.curve_keys)
        return gen.device, None, gen.link

    @property
    def description(self) -> str:
        """One line naming what runs: model, cut, codec, defense, where the server half is."""
        if self.cuts is None:
            return f"{self.lm.name} unsplit"
        where = self.server or "in process"
        defense = f" defense {getattr(self.defense, 'name', self.defense)}" if self.defense else ""
        return f"{self.lm.name} cut {','.join(map(str, self.cuts))} codec {self.codec_name}{defense} ({where})"

    def close(self) -> None:
        """Close the link (a remote session and its socket)."""
        if self._link is not None:
            self._link.close()
        for gen in self._generators.values():
            gen.link.close()

    # -- scoring -------------------------------------------------------------------------------------
    def _score_rows(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[list[float], list[bool]]]:
        """For each (input ids, targets of its last len(targets) positions): their log-probs and greedy
        flags through the split (or the unsplit model)."""
        if self.cuts is None:
            return self._score_local(rows, None)
        if self.server is None:
            return self._score_local(rows, self._device_half)
        return [self._score_remote(ids, targets) for ids, targets in rows]

    @torch.no_grad()
    def _score_local(self, rows, device) -> list[tuple[list[float], list[bool]]]:
        """In process, batched: right-padded stages (causal attention: a real position never sees a pad);
        one codec message per row, carried and counted by the link."""
        lens = [len(ids) for ids, _ in rows]
        batch = torch.zeros(len(rows), max(lens), dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            batch[i, :lens[i]] = torch.tensor(ids)
        if device is None:
            logits = self.lm.model(batch).logits
        else:
            per_row = device.acts_on_embeddings  # its noise must not depend on the batch it ran in
            hidden = None if per_row else device.hidden(batch)
            received = torch.zeros(len(rows), max(lens), self.lm.hidden_size)
            for i, n in enumerate(lens):
                device.reset()  # each request starts a fresh stream: defense noise, session codec state
                h = device.hidden(batch[i:i + 1, :n]) if per_row else hidden[i:i + 1, :n]
                received[i, :n] = self._link.carry(device.encode(h), "prefill")[0]
                self.traffic_bytes_up = self._link.traffic.bytes_up
                self.scored_tokens += n
            logits = self._server_half.logits(received)
        return [target_logprobs(logits[i, lens[i] - len(t):lens[i]], t) for i, (_, t) in enumerate(rows)]

    @torch.no_grad()
    def _score_remote(self, ids: list[int], targets: list[int]) -> tuple[list[float], list[bool]]:
        """Over the wire: a fresh session per request; a long input goes as the server's chunks, each
        step asking for the log-probs of the targets among its positions."""
        link, device = self._link, self._device_half
        link.reset()
        device.reset()
        hidden = device.hidden(torch.tensor([ids]))
        n, k = len(ids), len(targets)
        per = link.max_chunk_tokens(hidden)
        lps: list[float] = []
        greedy: list[bool] = []
        for start in range(0, n, per):
            end = min(n, start + per)
            first = max(start, n - k)  # scored positions form a suffix of the input
            want = targets[first - (n - k):end - (n - k)] if end > first else []
            enc = device.encode(hidden[:, start:end])
            if not want:  # a chunk before the continuation: a plain step fills the server's cache
                link.step(enc, start)
                continue
            lp, gr = link.score(enc, start, want)
            lps += lp
            greedy += gr
        self.traffic_bytes_up += link.traffic.bytes_up
        self.scored_tokens += n
        return lps, greedy

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """lm-eval's contract: for each ((context, continuation), context ids, continuation ids), the summed
        log-probability of the continuation and whether it is the greedy one. Inputs are left-truncated
        to `max_length` exactly as `HFLM` does."""
        rows = []
        for _, ctx, cont in requests:
            if not cont:
                raise ConfigError("a loglikelihood request with an empty continuation; check the task's "
                                  "doc_to_choice / target delimiter")
            inp = (ctx + cont)[-(self.max_length + 1):][:-1]
            rows.append((inp, cont[-len(inp):] if len(cont) > len(inp) else cont))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        bs = int(override_bs or self.batch_size or 1)
        out: list[tuple[float, bool] | None] = [None] * len(rows)
        for s in tqdm(range(0, len(order), bs), disable=disable_tqdm, desc="split loglikelihood"):
            idx = order[s:s + bs]
            for i, (lps, greedy) in zip(idx, self._score_rows([rows[i] for i in idx]), strict=True):
                out[i] = (float(sum(lps)), all(greedy))
                self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out  # type: ignore[return-value]

    # -- generation ----------------------------------------------------------------------------------
    def _generator(self, sampling):
        """A SplitGenerator for this sampling config (built once per config)."""
        key = (sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
        if key not in self._generators:
            from splitinfer.split import SplitGenerator, in_process_generator

            if self.server is None and sampling.greedy and self._device_half is not None:
                from splitinfer.split import InProcessLink

                self._generators[key] = SplitGenerator(self.lm, self._device_half, InProcessLink(self._server_half))
            elif self.server is None:
                self._generators[key] = in_process_generator(self.lm, self.cuts or [self.lm.num_layers],
                                                             self.codec if self.cuts else None, sampling,
                                                             defense=self.defense if self.cuts else None)
            else:
                from splitinfer.transport.client import remote_generator

                self._generators[key] = remote_generator(self.lm, self.cuts, self.server, codec=self.codec,
                                                         sampling=sampling, defense=self.defense,
                                                         timeout_s=self.timeout_s, curve_keys=self.curve_keys)
        return self._generators[key]

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        """`HFLM.generate_until` calls this with a left-padded batch; each row is generated on its own
        through the split (stopping at EOS or a stop sequence) and the batch returned padded as `generate`
        would. Greedy unless the task asks for sampling (`do_sample`, `temperature`)."""
        from splitinfer.split import SamplingConfig

        mask = generation_kwargs.pop("attention_mask", None)
        temperature = float(generation_kwargs.get("temperature") or 0.0)
        do_sample = bool(generation_kwargs.get("do_sample")) and temperature > 0
        sampling = SamplingConfig(temperature=temperature if do_sample else 0.0,
                                  top_k=int(generation_kwargs.get("top_k") or 0),
                                  top_p=float(generation_kwargs.get("top_p") or 1.0) if do_sample else 1.0)
        gen = self._generator(sampling)
        width = context.shape[1]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        rows = []
        for r in range(context.shape[0]):
            ids = context[r][mask[r].bool()] if mask is not None else context[r]
            budget = max(1, max_length - width)

            def check(tokens, stop=stop):
                text = self.tok_decode(tokens)
                if any(s and s in text for s in stop):
                    raise _Stop(tokens)

            try:
                tokens = gen.generate(ids[None], budget, chat=False, on_token=check).token_ids
            except _Stop as s:
                tokens = s.tokens
            rows.append(tokens)
        out = torch.full((context.shape[0], width + max(map(len, rows), default=0)), pad, dtype=torch.long)
        out[:, :width] = context
        for r, tokens in enumerate(rows):
            out[r, width:width + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return out
