"""CurveZMQ: keygen, encrypted sessions for allowed keys only, and the non-loopback warning."""

from __future__ import annotations

import logging
import stat

import pytest
import torch

from splitinfer.generation import unsplit_generate
from splitinfer.transport import RemoteError, TransportTimeout, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.keys import create_keypair, make_key_folder
from splitinfer.transport.server import CurveConfig
from splitinfer.transport.server_config import ServerConfig

IDS = torch.tensor([[3, 9, 27, 81]])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    make_key_folder(d, ("client", "other"))
    create_keypair(d / "stranger", "client")  # a valid pair the server has never seen
    create_keypair(d / "stranger", "server")  # (only so the folder looks complete)
    return d


@pytest.fixture
def curve_server(make_server, tiny_lm, keys):
    return make_server(tiny_lm, [2], curve=CurveConfig(str(keys / "server.key_secret"),
                                                       str(keys / "allowed_clients")))


def test_keygen_folder(keys):
    for name in ("server.key", "server.key_secret", "client.key_secret", "allowed_clients/client.key",
                 "allowed_clients/other.key"):
        assert (keys / name).is_file(), name
    assert not list((keys / "allowed_clients").glob("*secret*"))
    assert stat.S_IMODE((keys / "client.key_secret").stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_keypair(keys, "client")


def test_allowed_client_generates(curve_server, tiny_lm, keys):
    gen = remote_generator(tiny_lm, [2], curve_server.url, codec="none", curve_keys=str(keys))
    try:
        assert gen.generate(IDS, 6, stop_at_eos=False).token_ids == unsplit_generate(tiny_lm, IDS, 6)
        assert gen.link.info()["curve"] is True
    finally:
        gen.link.close()


def test_curve_keys_from_environment(curve_server, tiny_lm, keys, monkeypatch):
    monkeypatch.setenv("SPLITINFER_CURVE_KEYS", str(keys))
    gen = remote_generator(tiny_lm, [2], curve_server.url, codec="none")
    try:
        assert gen.link.ping() < 5
    finally:
        gen.link.close()


@pytest.mark.parametrize("who", ["stranger", "plaintext"])
def test_unknown_or_unencrypted_clients_are_refused(curve_server, tiny_lm, keys, who):
    kw = {"curve_keys": str(keys / "stranger")} if who == "stranger" else {}
    if who == "stranger":
        (keys / "stranger" / "server.key").write_bytes((keys / "server.key").read_bytes())
    # Sessions of earlier tests may still be closing on a loaded machine (a close waits at most 1 s for
    # its reply), so compare with the count before: the refused client must not have added one.
    before = curve_server.session_count
    gen = remote_generator(tiny_lm, [2], curve_server.url, codec="none", timeout_s=0.3, retries=0, **kw)
    try:
        with pytest.raises(TransportTimeout):
            gen.generate(IDS, 2)
    finally:
        gen.link.close()
    assert curve_server.session_count <= before


def test_session_belongs_to_the_key_that_opened_it(curve_server, tiny_lm, keys, tmp_path):
    import shutil

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(keys / "other.key_secret", other / "client.key_secret")
    shutil.copy(keys / "server.key", other / "server.key")
    a = remote_generator(tiny_lm, [2], curve_server.url, codec="none", curve_keys=str(keys))
    b = remote_generator(tiny_lm, [2], curve_server.url, codec="none", curve_keys=str(other), max_replays=0)
    try:
        a.generate(IDS, 2, stop_at_eos=False)
        b.link.sid = a.link.sid  # b tries to drive a's session
        with pytest.raises(RemoteError) as e:
            b.link.step(b.device.encode(torch.zeros(1, 1, tiny_lm.hidden_size)), 5)
        assert e.value.code == p.FORBIDDEN
    finally:
        b.link.sid = None
        a.link.close()
        b.link.close()


def test_curve_modes_and_non_loopback_warning(caplog, keys):
    assert ServerConfig(host="127.0.0.1", curve="auto").curve_config() is None
    with pytest.raises(ValueError, match="splitinfer keygen"):
        ServerConfig(host="0.0.0.0", curve="auto").curve_config()
    with caplog.at_level(logging.WARNING):
        assert ServerConfig(host="0.0.0.0", curve="off").curve_config() is None
    assert "without CurveZMQ" in caplog.text
    cfg = ServerConfig(host="0.0.0.0", curve="auto", keys=str(keys)).curve_config()
    assert cfg.load()[1]  # the server's secret key is there
    with pytest.raises(FileNotFoundError, match="keygen"):
        ServerConfig(curve="on", keys=str(keys / "missing")).curve_config().load()
