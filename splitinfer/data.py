"""Evaluation text for sweeps: a default corpus that ships with Python, or the user's own files.

The default is `pydoc_data.topics` (Python's own help texts), so a sweep never needs a download.
Sampling is seeded: the same spec and tokenizer always give the same token windows, and `digest`
names them, so cached reference results can be keyed on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCES = ("pydoc", "text", "jsonl", "licenses", "readmes")


class EmptyCorpusError(ValueError):
    """The corpus has no usable text; the message names the source and what to do."""


def load_texts(source: str = "pydoc", path: str | None = None, jsonl_field: str = "text") -> list[str]:
    """Documents of a corpus: `pydoc` (built in), `text` (a .txt file or a folder of them), `jsonl`,
    `licenses` (the installed packages' license files, a held-out corpus, see license_texts), `readmes`
    (the installed packages' descriptions, a second held-out corpus, see readme_texts)."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        texts = [topics[k] for k in sorted(topics)]
    elif source == "licenses":
        texts = license_texts()
    elif source == "readmes":
        texts = readme_texts()
    elif source in ("text", "jsonl"):
        if not path:
            raise ValueError(f"data.source={source!r} needs data.path=FILE (or a folder for text)")
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"data.path={str(p)!r} does not exist; point it at your {source} file")
        if source == "text":
            files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
            # One document per blank-line-separated block keeps windows inside coherent text.
            texts = [block for f in files for block in f.read_text(encoding="utf-8").split("\n\n")]
        else:
            texts = []
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{n} is not a JSON object: {e}") from None
                if not isinstance(row, dict) or not isinstance(row.get(jsonl_field), str):
                    raise ValueError(f"{p}:{n} has no string field {jsonl_field!r}; set data.jsonl_field")
                texts.append(row[jsonl_field])
    else:
        raise ValueError(f"data.source={source!r} is not one of {SOURCES}")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise EmptyCorpusError(f"corpus {source!r}{f' at {path}' if path else ''} has no text; "
                               "give a file with at least a few hundred words")
    return texts


def license_texts() -> list[str]:
    """A held-out English corpus with nothing to download: the LICENSE / COPYING files of the installed
    Python packages (legal prose, unlike pydoc's help texts; ~100 distinct texts in the project's venv).
    Deduplicated and ordered by content hash, so the same installed set always gives the same corpus
    whatever the install order; the corpus digest changes with the texts."""
    import importlib.metadata as md
    import re

    texts = []
    for dist in md.distributions():
        for f in dist.files or []:
            if not re.search(r"(^|/)(LICEN[CS]E|COPYING)[^/]*$", str(f), re.I):
                continue
            try:
                texts.append(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue
    return _by_content_hash(texts, 500)  # 500: skip one-line pointers ("see LICENSE-APACHE")


def _by_content_hash(texts: list[str | None], min_chars: int) -> list[str]:
    """Texts stripped (and trailing blanks dropped), at least min_chars long, deduplicated and ordered by
    content hash: the same installed set gives the same corpus whatever the install order."""
    import re

    found: dict[str, str] = {}
    for text in texts:
        text = re.sub(r"[ \t]+\n", "\n", str(text or "").strip())
        if len(text) >= min_chars:
            found.setdefault(hashlib.sha256(text.encode()).hexdigest(), text)
    return [found[k] for k in sorted(found)]


def readme_texts() -> list[str]:
    """A second held-out corpus with nothing to download: the long descriptions (README, as the package's
    METADATA carries it) of the installed Python packages: project prose, install notes, markdown and a
    little code, a register neither pydoc's help texts nor the license texts cover (~110 texts of >= 2000
    characters in the project's venv). Deduplicated and ordered by content hash, like license_texts."""
    import importlib.metadata as md

    return _by_content_hash([d.metadata.get_payload() or d.metadata.get("Description") for d in md.distributions()],
                            2000)


def tokenize(lm, text: str) -> list[int]:
    """Token ids of raw text (no chat template). Models without a tokenizer (tiny test models) get
    UTF-8 bytes folded into their vocabulary, which is deterministic and good enough for tests."""
    if lm.tokenizer is not None:
        return list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    return [b % lm.vocab_size for b in text.encode("utf-8")]


@dataclass
class Corpus:
    """Token windows for teacher-forced quality metrics, and prompts for greedy generation."""

    windows: torch.Tensor  # (N, T) long
    prompts: torch.Tensor  # (P, Tp) long
    gen_tokens: int
    source: str
    digest: str

    @property
    def num_tokens(self) -> int:
        return int(self.windows.numel())


@dataclass(frozen=True)
class CorpusSpec:
    """What to sample (built by Hydra from `conf/data/*.yaml`); `build(lm)` tokenizes and samples."""

    source: str = "pydoc"
    path: str | None = None
    jsonl_field: str = "text"
    num_windows: int = 4
    window_tokens: int = 96
    num_prompts: int = 4
    prompt_tokens: int = 32
    gen_tokens: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_windows", "window_tokens", "num_prompts", "prompt_tokens", "gen_tokens"):
            v = getattr(self, name)
            low = {"num_prompts": 0, "gen_tokens": 2, "window_tokens": 2}.get(name, 1)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"data.{name}={v!r}: must be an int >= {low}")

    def check(self) -> None:
        """Fail early (before any model loads) on a missing or empty corpus."""
        load_texts(self.source, self.path, self.jsonl_field)

    def build(self, lm) -> Corpus:
        texts = load_texts(self.source, self.path, self.jsonl_field)
        rng = random.Random(self.seed)
        order = list(range(len(texts)))
        rng.shuffle(order)
        need = self.num_windows + self.num_prompts
        chunk = max(self.window_tokens, self.prompt_tokens)
        # Tokenize documents in a seeded order until there are enough tokens for 2x the chunks we need,
        # so we never tokenize a whole large corpus for a small sample.
        stream: list[int] = []
        for i in order:
            stream.extend(tokenize(lm, texts[i]))
            if len(stream) >= 2 * need * chunk:
                break
        chunks = [stream[s:s + chunk] for s in range(0, len(stream) - chunk + 1, chunk)]
        if not chunks:
            raise EmptyCorpusError(f"corpus {self.source!r} has only {len(stream)} tokens; need at least "
                                   f"{chunk} for one window (lower data.window_tokens or add text)")
        picked = rng.sample(range(len(chunks)), min(need, len(chunks)))
        if len(picked) < need:
            log.warning("corpus has %d windows of %d tokens; reusing some to make %d", len(chunks), chunk, need)
            picked = [picked[i % len(picked)] for i in range(need)]
        windows = torch.tensor([chunks[i][: self.window_tokens] for i in picked[: self.num_windows]])
        prompts = torch.tensor([chunks[i][: self.prompt_tokens] for i in picked[self.num_windows:]],
                               dtype=torch.long).reshape(self.num_prompts, self.prompt_tokens)
        h = hashlib.sha256(json.dumps([self.source, self.path, self.gen_tokens]).encode())
        h.update(windows.numpy().tobytes())
        h.update(prompts.numpy().tobytes())
        return Corpus(windows, prompts, self.gen_tokens, self.source, h.hexdigest()[:16])
