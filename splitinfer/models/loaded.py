"""`LoadedModel`: a loaded model plus what the rest of splitinfer needs to know about it (family, name,
fingerprint, tokenizer helpers). Its own module so that partitioning and verification can name it without
importing the loaders."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import adapters


@dataclass
class LoadedModel:
    """A loaded model plus what the rest of splitinfer needs to know about it."""

    model: torch.nn.Module
    tokenizer: object | None
    family: str  # the config's model_type: "llama" (also SmolLM2), "qwen2", "gemma3_text", "gpt2", "bert", ...
    name: str
    fingerprint: str
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def kind(self) -> str:
        """'decoder' (a causal LM, split by DecoderStage) or 'encoder' (BERT, split by EncoderStage)."""
        return "encoder" if self.model_type in adapters.ENCODER_TYPES else "decoder"

    @property
    def is_causal_lm(self) -> bool:
        return self.kind == "decoder"

    def encode_prompt(self, text: str, chat: bool = True) -> torch.Tensor:
        """Token ids (1, T) for a prompt; wraps it in the chat template when asked and available."""
        if self.tokenizer is None:
            raise ConfigError(f"model {self.name!r} has no tokenizer; pass token ids instead of text")
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if hasattr(ids, "keys"):  # BatchEncoding in newer transformers
                ids = ids["input_ids"]
            ids = list(ids)
            if ids and isinstance(ids[0], list):
                ids = ids[0]
        else:
            ids = tok(text)["input_ids"]
        return torch.tensor([ids], dtype=torch.long)

    def decode(self, token_ids) -> str:
        if self.tokenizer is None:
            return " ".join(str(int(t)) for t in token_ids)
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(self.model.config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids
