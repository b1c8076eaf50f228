"""The GGUF conversion cache is content-addressed: every copy of one file (clones, venvs, paths) maps to
one conversion under cache_root(), the hash is memoised per path+size+mtime, and peeking never hashes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import pytest

from splitinfer.models import cache_root, load_model, peek_num_layers, tiny_model
from splitinfer.models.loading import (
    bundled_gguf,
    gguf_cache_dir,
    gguf_sha256,
    legacy_cache_dir,
    report_conversion,
)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _file(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_copies_share_one_cache_dir_and_other_content_does_not(cache, tmp_path):
    a = _file(tmp_path / "clone1" / "model.gguf", b"GGUF" + bytes(range(256)) * 100)
    b = _file(tmp_path / "venv2" / "renamed.gguf", a.read_bytes())
    c = _file(tmp_path / "clone1" / "other.gguf", b"GGUF" + bytes(range(255, -1, -1)) * 100)
    assert gguf_cache_dir(a) == gguf_cache_dir(b) != gguf_cache_dir(c)
    assert gguf_cache_dir(a).parent == cache_root() / "models" == cache / "models"
    assert legacy_cache_dir(a) != legacy_cache_dir(b)  # what the path-keyed cache did


def test_hash_is_memoised_per_path_size_and_mtime(cache, tmp_path):
    f = _file(tmp_path / "m.gguf", b"GGUF" + os.urandom(4096))
    assert gguf_sha256(f, compute=False) is None  # never hashed: peeking would not read the file
    digest = gguf_sha256(f)
    index = json.loads((cache / "models" / "gguf-sha256.json").read_text())
    assert index[str(f.resolve())]["sha256"] == digest and index[str(f.resolve())]["size"] == f.stat().st_size
    assert gguf_sha256(f, compute=False) == digest
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: the memo no longer applies
    assert gguf_sha256(f, compute=False) is None
    assert gguf_sha256(f) == digest  # same content, same key
    f.write_bytes(b"GGUF" + os.urandom(4096))
    assert gguf_sha256(f) != digest


def test_an_earlier_path_keyed_conversion_is_adopted_not_redone(cache, tmp_path, caplog):
    """A conversion made before the cache was content-addressed moves to its content key on first load."""
    gguf = _file(tmp_path / "m.gguf", b"GGUF" + os.urandom(1024))
    lm = tiny_model("llama", num_hidden_layers=3)
    lm.model.save_pretrained(legacy_cache_dir(gguf))
    with caplog.at_level(logging.WARNING, logger="splitinfer.models.loading"):
        again = load_model(str(gguf))
    assert again.fingerprint == lm.fingerprint and again.source == str(gguf)
    assert not legacy_cache_dir(gguf).exists() and (gguf_cache_dir(gguf) / "config.json").is_file()
    assert "content-addressed cache" in caplog.text
    # a copy elsewhere finds the same conversion; peeking it reads the cached config once the hash is known
    copy = _file(tmp_path / "elsewhere" / "copy.gguf", gguf.read_bytes())
    assert load_model(str(copy)).fingerprint == lm.fingerprint
    assert peek_num_layers(str(copy)) == 3  # not a real GGUF: only the cached config can answer


def test_a_new_conversion_says_where_and_how_big(cache, tmp_path, caplog):
    target = cache / "models" / "gguf-sha256-x"
    _file(target / "model.safetensors", b"\0" * 3_000_000)
    with caplog.at_level(logging.WARNING, logger="splitinfer.models.loading"):
        report_conversion(tmp_path / "m.gguf", target)
    assert str(target) in caplog.text and "3 MB" in caplog.text


@pytest.mark.slow
def test_a_copy_of_the_bundled_gguf_reuses_its_conversion(real_model, tmp_path):
    """Another clone's copy of the bundled file (new path, new mtime) loads from the one conversion."""
    copy = tmp_path / "clone" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    copy.parent.mkdir()
    shutil.copy(bundled_gguf("smollm2-135m-instruct"), copy)
    before = sorted(p.name for p in (cache_root() / "models").iterdir())
    t0 = time.perf_counter()
    lm = load_model(str(copy))
    assert time.perf_counter() - t0 < 10.0  # hashing ~100 MB plus a cached load; a conversion takes ~25 s
    assert lm.fingerprint == real_model.fingerprint
    assert sorted(p.name for p in (cache_root() / "models").iterdir()) == before
    assert peek_num_layers(str(copy)) == 30
