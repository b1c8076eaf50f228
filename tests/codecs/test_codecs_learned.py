"""The learned bottleneck codec (codecs/learned.py) on a tiny random model: fit, round trip, cache, binding."""

from __future__ import annotations

import pytest
import torch

from splitinfer.codecs import CodecError, available_codecs, build_codec, decode_any
from splitinfer.models import split_model, tiny_model

SMALL = {"latent": 16, "bits": 3, "steps": 4, "fit_seqs": 8, "fit_len": 16, "mlp": 32}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CACHE", str(tmp_path))
    return tmp_path


def hidden(lm, n: int, t: int, cut: int = 2, seed: int = 5) -> torch.Tensor:
    ids = torch.randint(3, lm.vocab_size, (n, t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return split_model(lm, [cut])[0](ids).float()


def test_fit_roundtrip_shape_finite_and_rate(lm, cache):
    codec = build_codec("learned", **SMALL).bind(lm, 2)
    info = codec.fit_info
    assert info["steps_done"] == 4 and not info["cached"] and info["fit_tokens"] == 8 * 16
    h = hidden(lm, 2, 40)
    h[:, 0, :3] = 100 * h.abs().max()  # an attention-sink-like token (massive channels) goes as an fp16 row
    enc = codec.encode(h)
    assert enc.header["meta"]["rows"] == 2
    out = codec.decode(enc)
    assert out.shape == h.shape and out.dtype == h.dtype and bool(torch.isfinite(out).all())
    assert torch.equal(out[:, 0], h[:, 0].half().float())
    # 16 latents x at most 3 bits + 16 bits of scale per token, over 64 values, plus the header
    bits = enc.nbytes * 8 / h.numel()
    assert bits < (16 * 3 + 16) / 64 + 1.0
    # the reconstruction is a projection: it keeps some of the signal, not all
    err = float((out[:, 1:] - h[:, 1:]).norm() / (h[:, 1:] - h[:, 1:].mean()).norm())
    assert 0.0 < err < 1.5
    one = h[:, 5:6].half()  # a decode step, another dtype: one ANS call, a model per symbol
    back = codec.decode(codec.encode(one))
    assert back.shape == one.shape and back.dtype == torch.float16


def test_common_step_spends_bits_where_the_variance_is(lm, cache):
    h = hidden(lm, 2, 64)
    coarse = build_codec("learned", **{**SMALL, "latent": 64, "bits": 6, "step": 2.0, "steps": 0}).bind(lm, 2)
    fine = build_codec("learned", **{**SMALL, "latent": 64, "bits": 6, "step": 0.5, "steps": 0}).bind(lm, 2)
    ec, ef = coarse.encode(h), fine.encode(h)
    assert ec.nbytes < ef.nbytes
    err = [float((c.decode(e) - h).norm()) for c, e in ((coarse, ec), (fine, ef))]
    assert err[1] < err[0]
    with pytest.raises(CodecError, match="step=-1"):
        build_codec("learned", step=-1)


def test_split_path_generates_with_a_bound_codec(lm, cache):
    from splitinfer.split.generator import in_process_generator

    codec = build_codec("learned", **SMALL).bind(lm, 2)
    gen = in_process_generator(lm, [2], codec=codec)
    res = gen.generate(torch.randint(3, lm.vocab_size, (1, 12)), max_new_tokens=4, chat=False)
    assert len(res.token_ids) == 4 and res.bytes_up > 0


def test_fit_is_cached_per_model_cut_and_spec(lm, cache):
    a = build_codec("learned", **SMALL).bind(lm, 2)
    files = sorted(p.name for p in (cache / "codecs").iterdir())
    assert len(files) == 1
    b = build_codec("learned", **SMALL).bind(lm, 2)
    assert b.fit_info["cached"] and b.digest == a.digest
    enc = a.encode(hidden(lm, 1, 30))
    assert torch.equal(b.decode(enc), a.decode(enc))  # the server's copy loads the device's fit
    build_codec("learned", **SMALL).bind(lm, 3)
    build_codec("learned", **{**SMALL, "bits": 2}).bind(lm, 2)
    assert len(list((cache / "codecs").iterdir())) == 3


def test_unbound_and_wrong_cut_errors(lm, cache):
    codec = build_codec("learned", **SMALL)
    with pytest.raises(CodecError, match=r"bind\(lm, cut\)"):
        codec.encode(torch.randn(1, 4, lm.hidden_size))
    enc = build_codec("learned", **SMALL).bind(lm, 2).encode(torch.randn(1, 4, lm.hidden_size))
    with pytest.raises(CodecError, match="before it is bound"):
        decode_any(enc)  # a header alone cannot rebuild a fitted decoder
    other = build_codec("learned", **SMALL).bind(lm, 3)
    with pytest.raises(CodecError, match="coded at cut 2 .* bound to cut 3"):
        other.decode(enc)
    with pytest.raises(CodecError, match="cut=9"):
        build_codec("learned", **SMALL).bind(lm, 9)
    with pytest.raises(CodecError, match="hidden size"):
        other.encode(torch.randn(1, 4, lm.hidden_size + 1))


def test_params_are_checked_and_presets_listed():
    from splitinfer.codecs.registry import learned_codecs

    assert {"learned_d160_b4", "learned_q160"} <= set(learned_codecs())
    assert not set(learned_codecs()) & set(available_codecs())  # those encode unbound
    with pytest.raises(CodecError, match="bits=9"):
        build_codec("learned", bits=9)
    with pytest.raises(CodecError, match="unknown learned-codec params"):
        build_codec("learned", latnet=8)
    with pytest.raises(CodecError, match="loss="):
        build_codec("learned", loss="l1")


def test_corrupted_message_is_refused(lm, cache):
    codec = build_codec("learned", **SMALL).bind(lm, 2)
    enc = codec.encode(hidden(lm, 1, 300))
    enc.buffers[3] = bytes(enc.buffers[3])[:-2]
    with pytest.raises(CodecError):
        codec.decode(enc)


def test_bound_wherever_a_split_is_built_and_a_server_never_fits(lm, cache, monkeypatch):
    """split_pair and remote_generator bind an unbound learned codec (fitting it once, cached); a server
    binds it from its cache only: without a fit there the open is refused (bad_codec), never fitted."""
    from splitinfer.split import in_process_generator
    from splitinfer.transport import RemoteError, SplitServer, remote_generator

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    gen = in_process_generator(lm, [2], codec=build_codec("learned", **SMALL))  # fits it, caches it
    assert gen.device.codec.bound and gen.device.codec.cut == 2 and not gen.device.codec.fit_info["cached"]
    local = gen.generate(ids, 3, stop_at_eos=False).token_ids
    with SplitServer(lm, [2], port=0) as server:
        remote = remote_generator(lm, [2], server.url, codec=build_codec("learned", **SMALL))
        assert remote.device.codec.fit_info["cached"]  # the device loaded the fit
        monkeypatch.setenv("SPLITINFER_CACHE", str(cache / "server-without-the-fit"))
        with pytest.raises(RemoteError, match="bad_codec.*no fit"):
            remote.generate(ids, 3, stop_at_eos=False)
        monkeypatch.setenv("SPLITINFER_CACHE", str(cache))
        assert remote.generate(ids, 3, stop_at_eos=False).token_ids == local
        remote.link.close()


def test_a_cached_fit_is_never_unpickled_as_code(lm, cache, tmp_path):
    """The fit file may be copied in by hand: loading it runs no pickled code, and a bad one is a clear error."""
    import pickle

    from splitinfer.codecs.learned import fit_key

    codec = build_codec("learned", **SMALL)
    path = cache / "codecs" / f"learned-{fit_key(lm.fingerprint, 2, codec.p)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"state": Payload(), "info": {}}))
    with pytest.raises(CodecError, match="not a learned-codec fit.*delete it"):
        codec.bind(lm, 2, fit=False)
    assert not marker.exists()


@pytest.mark.parametrize("tokens", [1, 40, 300])  # one call with a model per symbol (< 4096 symbols), per column
def test_compiled_coder_is_lossless_for_the_latents(lm, cache, tokens):
    """The ANS stream gives back exactly the quantised latents: decode == the quantiser's own reconstruction."""
    codec = build_codec("learned", **SMALL).bind(lm, 2)
    h = hidden(lm, 1, tokens).reshape(tokens, -1)
    enc = codec.encode(h)
    assert enc.header["v"] == 2 and enc.header["meta"]["rows"] == 0
    assert len(enc.buffers[3]) == 4 * enc.header["meta"]["words"]
    with torch.no_grad():
        u, r = codec.normalise(h)
        want = codec.reconstruct(codec.symbols(u), r.half().float())
    assert torch.equal(codec.decode(enc), want)
    old = {**enc.header, "v": 1}  # a message of the plain-numpy rANS (before issue 28): refused by version
    with pytest.raises(CodecError, match="format version 1 is not supported"):
        codec.decode(type(enc)(old, enc.buffers))
