"""Synthetic private prompts (victims) and public auxiliary text (attacker's training data).

Victims are assistant-style requests built with Faker (en_US and ja_JP, fixed seed) that hold a name,
a phone number, an address, an e-mail, a date and a medical term; each prompt records its private
items so the PII recovery rate can be measured. The auxiliary corpus is public text the attacker may
train on: Python's own documentation (`pydoc_data`, ships with every CPython) plus Faker sentences of
*different* templates and a different seed, so no victim prompt is ever in the attacker's data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

MEDICAL_TERMS_EN = [
    "high cholesterol", "type 2 diabetes", "hypothyroidism", "anemia", "elevated liver enzymes",
    "a positive HIV test", "chronic kidney disease", "hepatitis C", "a vitamin D deficiency",
    "atrial fibrillation", "early-stage breast cancer", "major depressive disorder",
]
MEDICAL_TERMS_JA = ["高コレステロール", "2型糖尿病", "甲状腺機能低下症", "貧血", "肝機能障害", "慢性腎臓病", "C型肝炎"]

TEMPLATES_EN = [
    "Hi, I'm {name}, my phone is {phone} and I live at {address}. My blood test results from {date} "
    "show {medical}. Can you email a summary to {email}?",
    "Please draft a note to my doctor: I am {name} (born {date}), reachable at {phone} or {email}. "
    "I was diagnosed with {medical}. My address is {address}.",
    "My name is {name}. I got my blood test results on {date} and they show {medical}. Write to me at "
    "{email} or call {phone}; mail goes to {address}.",
]
TEMPLATES_JA = [
    "こんにちは、{name}です。電話番号は{phone}、住所は{address}です。{date}の血液検査で{medical}と言われました。"
    "結果を{email}に送ってください。",
    "{name}と申します。{date}に{medical}と診断されました。連絡先は{phone}、メールは{email}、住所は{address}です。",
]
# Auxiliary (attacker-side) templates: same kind of assistant requests, different wording.
AUX_TEMPLATES_EN = [
    "Can you help me write a message to {name} about the meeting on {date}? Their number is {phone}.",
    "Summarize this: {name} moved to {address} and can be reached at {email}.",
    "I need advice about {medical}. My friend {name} says I should call {phone}.",
    "Remind me to send the invoice to {email} before {date}, and to visit {address}.",
]
AUX_TEMPLATES_JA = ["{name}さんに{date}の会議について連絡してください。電話は{phone}です。", "{address}に住んでいる{name}さんについて教えて。"]

PII_KINDS = ("name", "phone", "address", "email", "date", "medical")


@dataclass
class Victim:
    """One private prompt: its text, token ids (1, T), which positions count, and its private items."""

    text: str
    ids: torch.Tensor
    pii: list[tuple[str, str]] = field(default_factory=list)  # (kind, exact string)
    locale: str = "en_US"
    scored: torch.Tensor | None = None  # bool (T,): positions counted by token accuracy (not special)
    content: torch.Tensor | None = None  # bool (T,): positions of the user's own text

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[1])


def _fill(fake, locale: str, rng: random.Random) -> dict[str, str]:
    medical = rng.choice(MEDICAL_TERMS_JA if locale == "ja_JP" else MEDICAL_TERMS_EN)
    address = fake.address().replace("\n", ", ")
    return {
        "name": fake.name(),
        "phone": fake.phone_number(),
        "address": address,
        "email": fake.email(),
        "date": fake.date_between(start_date="-3y", end_date="today").strftime("%Y-%m-%d"),
        "medical": medical,
    }


def private_prompts(n: int = 8, *, seed: int = 0, locales: tuple[str, ...] = ("en_US", "ja_JP"),
                    aux: bool = False) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """`n` (text, locale, pii items) triples, alternating locales; deterministic for a seed.

    `aux=True` uses the auxiliary templates (the attacker's public data), never the victim ones.
    """
    from faker import Faker

    out = []
    fakers = {}
    for loc in locales:
        f = Faker(loc)
        f.seed_instance(seed * 1000 + 17 + len(fakers) + (7919 if aux else 0))
        fakers[loc] = f
    rng = random.Random(seed + (104729 if aux else 0))
    for i in range(n):
        loc = locales[i % len(locales)]
        templates = (AUX_TEMPLATES_JA if loc == "ja_JP" else AUX_TEMPLATES_EN) if aux else (
            TEMPLATES_JA if loc == "ja_JP" else TEMPLATES_EN)
        template = templates[i // len(locales) % len(templates)]
        values = _fill(fakers[loc], loc, rng)
        text = template.format(**values)
        pii = [(k, values[k]) for k in PII_KINDS if "{" + k + "}" in template]
        out.append((text, loc, pii))
    return out


def _masks(lm, text: str, ids: torch.Tensor, chat: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scored positions (not special tokens) and the user's content positions of a prompt."""
    t = ids.shape[1]
    tok = lm.tokenizer
    if tok is None:
        return torch.ones(t, dtype=torch.bool), torch.ones(t, dtype=torch.bool)
    special = set(tok.all_special_ids)
    scored = torch.tensor([int(i) not in special for i in ids[0]], dtype=torch.bool)
    content = scored.clone()
    try:
        rendered = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False) if chat and getattr(tok, "chat_template", None) else text
        enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == [int(i) for i in ids[0]]:
            start = rendered.rindex(text)
            end = start + len(text)
            content = torch.tensor([s < end and e > start for s, e in enc["offset_mapping"]], dtype=torch.bool)
    except (ValueError, TypeError, NotImplementedError, KeyError):
        pass  # fall back to every non-special position
    return scored, content & scored


def victim_set(lm, n: int = 8, *, seed: int = 0, chat: bool = True, max_tokens: int | None = None,
               locales: tuple[str, ...] = ("en_US", "ja_JP")) -> list[Victim]:
    """Tokenized victims for `lm`. Models without a tokenizer (tiny test models) get random token ids
    of Faker-like length, with no PII items (only token metrics apply)."""
    if lm.tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        length = max_tokens or 16
        victims = []
        for _ in range(n):
            ids = torch.randint(3, lm.vocab_size, (1, length), generator=g)
            victims.append(Victim(text="", ids=ids, scored=torch.ones(length, dtype=torch.bool),
                                  content=torch.ones(length, dtype=torch.bool), locale="random"))
        return victims
    victims = []
    for text, loc, pii in private_prompts(n, seed=seed, locales=locales):
        ids = lm.encode_prompt(text, chat=chat)
        if max_tokens is not None:
            ids = ids[:, :max_tokens]
        scored, content = _masks(lm, text, ids, chat)
        victims.append(Victim(text=text, ids=ids, pii=pii, locale=loc, scored=scored[: ids.shape[1]],
                              content=content[: ids.shape[1]]))
    return victims


def aux_corpus(n_faker: int = 200, *, seed: int = 1, docs_chars: int = 200_000) -> list[str]:
    """Public text for the attacker: Python documentation plus Faker requests on auxiliary templates."""
    texts: list[str] = []
    try:
        import pydoc_data.topics as topics

        budget = docs_chars
        for key in sorted(topics.topics):
            if budget <= 0:
                break
            chunk = topics.topics[key][:4000]
            texts.append(chunk)
            budget -= len(chunk)
    except ImportError:  # stripped-down Pythons; the Faker part still works
        pass
    texts += [t for t, _, _ in private_prompts(n_faker, seed=seed + 1, aux=True)]
    return texts
