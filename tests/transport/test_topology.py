"""Topologies over ZeroMQ with in-thread servers: a relay hop (device -> edge -> cloud), the U-shape
(and what its server sees), replicas with failover, and the one-line errors for chains that do not fit."""

from __future__ import annotations

import threading

import msgpack
import pytest
import torch
import zmq

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.split import SamplingConfig, SplitGenerator, in_process_generator
from splitinfer.split.middle import in_process_chain
from splitinfer.transport.client import RemoteError
from splitinfer.transport.relay import RelayEngine, ask_info
from splitinfer.transport.topology import UShapeEngine, connect

from .conftest import free_port


def _prompt(seed: int, n: int = 7) -> torch.Tensor:
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def chain(tiny_lm, make_server):
    """(edge, cloud): the cloud serves from layer 3, the edge runs [1, 3) and forwards to it."""
    cloud = make_server(tiny_lm, [3])
    edge = make_server(tiny_lm, [1, 3], engine=RelayEngine(tiny_lm, [1, 3], cloud.url, ask_info(cloud.url)))
    return edge, cloud


def test_relay_chain_gives_the_in_process_chain_text_and_per_hop_bytes(tiny_lm, chain, one_torch_thread):
    edge, _ = chain
    reference = in_process_generator(tiny_lm, [1, 3])
    gen = connect(tiny_lm, [1, 3], edge.url, codec="none")
    try:
        for seed in range(8):
            ids = _prompt(seed, 4 + seed)
            out = gen.generate(ids, 6, stop_at_eos=False)
            assert out.token_ids == reference.generate(ids, 6, stop_at_eos=False).token_ids, seed
            hop2 = gen.link.hops[0]  # the edge's hop to the cloud, reported in the step replies
            assert hop2["steps"] == 6 and hop2["bytes_up"] >= (ids.shape[1] + 5) * 64 * 4 and hop2["bytes_down"] > 0
    finally:
        gen.link.close()
    relay = edge.info()["relay"]
    assert relay["steps"] == 48 and relay["next_cuts"] == [3] and relay["bytes_up"] > 0


def test_two_relays_chain_four_parties(tiny_lm, make_server, one_torch_thread):
    cloud = make_server(tiny_lm, [3])
    edge2 = make_server(tiny_lm, [2, 3], engine=RelayEngine(tiny_lm, [2, 3], cloud.url, ask_info(cloud.url)))
    edge1 = make_server(tiny_lm, [1, 2], engine=RelayEngine(tiny_lm, [1, 2], edge2.url, ask_info(edge2.url)))
    assert edge1.info()["cuts"] == [1, 2, 3]  # the chain's cuts, advertised by its first hop
    gen = connect(tiny_lm, [1, 2, 3], edge1.url, codec="none")
    try:
        ids = _prompt(2)
        out = gen.generate(ids, 5, stop_at_eos=False)
    finally:
        gen.link.close()
    assert out.token_ids == in_process_generator(tiny_lm, [1, 2, 3]).generate(ids, 5, stop_at_eos=False).token_ids
    assert len(gen.link.hops) == 2 and all(h["steps"] == 5 and h["bytes_up"] > 0 for h in gen.link.hops)


def test_each_hop_has_its_own_codec(tiny_lm, make_server, one_torch_thread):
    cloud = make_server(tiny_lm, [3])
    edge = make_server(tiny_lm, [1, 3], engine=RelayEngine(tiny_lm, [1, 3], cloud.url, ask_info(cloud.url),
                                                           codec="int8"))
    gen = connect(tiny_lm, [1, 3], edge.url, codec="none", sampling=SamplingConfig(0.8, 40, seed=3))
    device, link, hop_links = in_process_chain(tiny_lm, [1, 3], ["none", "int8"], SamplingConfig(0.8, 40, seed=3))
    in_process = SplitGenerator(tiny_lm, device, link)
    try:
        for seed in range(3):  # sampled: a skipped or doubled step would show; int8 on hop 2 in both
            ids = _prompt(seed)
            out = gen.generate(ids, 8, stop_at_eos=False)
            assert out.token_ids == in_process.generate(ids, 8, stop_at_eos=False).token_ids, seed
    finally:
        gen.link.close()
    hop1_up = gen.link.traffic.bytes_up
    assert gen.link.hops[0]["bytes_up"] < 0.6 * hop1_up  # int8 on hop 2, fp32 on hop 1 (64-wide: headers weigh)
    hops = hop_links()
    assert len(hops) == 2 and hops[1].traffic.bytes_up < 0.6 * hops[0].traffic.bytes_up  # per hop in-process too


class RecordingProxy:
    """Sits between one client and a server and keeps every multipart message both ways (real sockets)."""

    def __init__(self, server_url: str) -> None:
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.linger = 0
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.back = self.ctx.socket(zmq.DEALER)
        self.back.linger = 0
        self.back.connect(server_url)
        self.to_server: list[list[bytes]] = []
        self.from_server: list[list[bytes]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        client = None
        while not self.stop.is_set():
            for sock, _ in poller.poll(20):
                if sock is self.front:
                    client, *msg = self.front.recv_multipart()
                    self.to_server.append(msg)
                    self.back.send_multipart(msg)
                else:
                    msg = self.back.recv_multipart()
                    self.from_server.append(msg)
                    self.front.send_multipart([client, *msg])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.front.close(0)
        self.back.close(0)
        self.ctx.term()


def leaks(messages: list[list[bytes]], hidden: int, vocab: int) -> list[str]:
    """What in these messages is a token id or logits: envelope fields that carry tokens or scores, and
    tensors of vocabulary width (or anything that is neither an envelope nor an H-wide hidden state)."""
    found = []
    for msg in messages:
        env = msgpack.unpackb(msg[0], raw=False)
        found += [f"field {k}" for k in ("tok", "toks", "lp", "logits", "draft", "draft_p") if k in env]
        if len(msg) > 1:
            shape = EncodedTensor.from_frames(msg[1:]).header.get("shape")
            if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == hidden and vocab not in shape):
                found.append(f"tensor of shape {shape}")
    return found


def test_ushape_server_sees_no_token_ids_and_no_logits(tiny_lm, make_server, one_torch_thread):
    unsplit = in_process_generator(tiny_lm, [tiny_lm.num_layers])
    for engine, u_shape in ((UShapeEngine(tiny_lm, [1, 3]), True), (None, False)):
        srv = make_server(tiny_lm, [1, 3], engine=engine)
        proxy = RecordingProxy(srv.url)
        gen = connect(tiny_lm, [1, 3], proxy.url, codec="none", u_shape=u_shape)
        try:
            for seed in range(2):
                ids = _prompt(seed)
                out = gen.generate(ids, 8, stop_at_eos=False)
                assert out.token_ids == unsplit.generate(ids, 8, stop_at_eos=False).token_ids
        finally:
            gen.link.close()
            proxy.close()
        seen = leaks(proxy.to_server, tiny_lm.hidden_size, tiny_lm.vocab_size)
        sent = leaks(proxy.from_server, tiny_lm.hidden_size, tiny_lm.vocab_size)
        assert len(proxy.to_server) >= 17 and len(proxy.from_server) >= 17
        if u_shape:
            assert seen == [] and sent == [], (seen, sent)
            assert sum(len(m) > 1 for m in proxy.from_server) == 16  # a hidden state back for every step
        else:  # the same check on an ordinary server finds the answer's tokens in its replies
            assert seen == [] and sent.count("field tok") == 16, sent


def test_replicas_fail_over_by_replay(tiny_lm, make_server, one_torch_thread):
    a, b = make_server(tiny_lm, [2]), make_server(tiny_lm, [2])
    ids = _prompt(3)
    expected = in_process_generator(tiny_lm, [2]).generate(ids, 12, stop_at_eos=False).token_ids
    # 2 s of silence moves the session: long enough that a live replica on a loaded machine is never taken
    # for a dead one (0.3 s was), so exactly one failover is what must happen
    gen = connect(tiny_lm, [2], f"{a.url},{b.url}", codec="none", timeout_s=2.0, retries=0)
    gen.link.index, gen.link.url = 0, a.url  # start on the replica that is stopped mid-generation

    def stop_a(tokens: list[int]) -> None:
        if len(tokens) == 5:
            a.stop()

    try:
        out = gen.generate(ids, 12, stop_at_eos=False, on_token=stop_a)
    finally:
        gen.link.close()
    assert out.token_ids == expected
    assert gen.link.failovers == 1 and gen.link.url == b.url and len(gen.link.failover_s) == 1
    assert 2.0 <= gen.link.failover_s[0] < 20


def test_ushape_session_moves_to_another_replica_by_replay(tiny_lm, make_server, one_torch_thread):
    a = make_server(tiny_lm, [1, 3], engine=UShapeEngine(tiny_lm, [1, 3]))
    b = make_server(tiny_lm, [1, 3], engine=UShapeEngine(tiny_lm, [1, 3]))
    ids = _prompt(5)
    expected = in_process_generator(tiny_lm, [tiny_lm.num_layers]).generate(ids, 10, stop_at_eos=False).token_ids
    gen = connect(tiny_lm, [1, 3], f"{a.url},{b.url}", codec="none", u_shape=True, timeout_s=2.0, retries=0,
                  start=0)

    def stop_a(tokens: list[int]) -> None:
        if len(tokens) == 4:
            a.stop()

    try:
        out = gen.generate(ids, 10, stop_at_eos=False, on_token=stop_a)
    finally:
        gen.link.close()
    assert out.token_ids == expected and gen.link.failovers == 1 and gen.link.replays == 1


def test_a_full_replica_is_moved_past(tiny_lm, make_server, one_torch_thread):
    from splitinfer.transport.sessions import SessionLimits

    full, free = make_server(tiny_lm, [2], limits=SessionLimits(max_sessions=1)), make_server(tiny_lm, [2])
    holder = connect(tiny_lm, [2], full.url, codec="none")
    gen = connect(tiny_lm, [2], f"{full.url},{free.url}", codec="none", start=0)
    try:
        holder.generate(_prompt(0), 2, stop_at_eos=False)  # holds the full replica's only session
        out = gen.generate(_prompt(1), 4, stop_at_eos=False)
        assert gen.link.url == free.url and gen.link.failovers == 1 and len(out.token_ids) == 4
        alone = connect(tiny_lm, [2], full.url, codec="none")  # one replica only: the refusal is the answer
        with pytest.raises(RemoteError, match="session_limit"):
            alone.generate(_prompt(1), 2, stop_at_eos=False)
        alone.link.close()
    finally:
        holder.link.close()
        gen.link.close()


@pytest.mark.parametrize(("argv", "says"), [
    (["serve", "--cut", "2", "--u-shape"], "needs two cuts"),
    (["serve", "--cut", "1,4", "--u-shape"], "leaves no layers on the device"),
    (["serve", "--cut", "1,3", "--u-shape", "--next", "tcp://127.0.0.1:9"], "--u-shape and --next together"),
    (["generate", "hi", "--cut", "2", "--u-shape"], "needs two cuts"),
    (["generate", "hi", "--cut", "1,4", "--u-shape"], "leaves no layers on the device"),
    (["generate", "hi", "--cut", "1,3", "--down-codec", "int8"], "add --u-shape"),
    (["generate", "hi", "--cut", "1,3", "--server", "tcp://127.0.0.1:9,http://x"], "must look like tcp://"),
])
def test_bad_topologies_are_one_line_before_loading(argv, says, capsys):
    from splitinfer.cli import main

    assert main([*argv, "--model", "tiny-llama"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_chains_whose_cuts_do_not_match_the_hops_are_one_line(tiny_lm, make_server, chain, capsys):
    from splitinfer.cli import main

    edge, cloud = chain
    other = make_server(tiny_lm, [2])
    cases = [
        (["serve", "--cut", "1,3", "--next", other.url, "--port", "0"], "serves layers from 2"),  # next serves other layers
        (["serve", "--cut", "2", "--next", cloud.url, "--port", "0"], "--next needs --cut A,B"),
        (["serve", "--cut", "1,3", "--next", f"tcp://127.0.0.1:{free_port()}", "--hop-timeout", "0.2", "--port", "0"],
         "no server answered"),
    ]
    for argv, says in cases:
        assert main([*argv, "--model", "tiny-llama"]) == 2, argv
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (argv, err)
    # a device whose cuts are not the chain's, a U-shape device at a chain: refused at open, one line
    for cuts, u_shape, says in (([1, 2], False, "differ from this server's [1, 3]"),
                                ([1, 3], True, "start the server with --u-shape")):
        gen = connect(tiny_lm, cuts, edge.url, codec="none", u_shape=u_shape)
        try:
            with pytest.raises(RemoteError, match="cut_mismatch") as e:
                gen.generate(_prompt(0), 2, stop_at_eos=False)
        finally:
            gen.link.close()
        assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("u_shape", [False, True])
def test_middle_slices_refuse_score_and_logprob_steps_as_bad_field(tiny_lm, make_server, raw_client, u_shape):
    """A scoring step (lm-eval) to a relay hop or a U-shape server, and `logprob` to a U-shape, are one
    `bad_field` line naming what to do, not `internal`; the session is untouched and steps on after."""
    from splitinfer.transport import protocol as p
    from splitinfer.transport.payload import RawCodec

    from .conftest import open_fields

    if u_shape:
        srv = make_server(tiny_lm, [1, 3], engine=UShapeEngine(tiny_lm, [1, 3]))
        fields = open_fields(tiny_lm, (1, 3), topology="u")
    else:
        cloud = make_server(tiny_lm, [3])
        srv = make_server(tiny_lm, [1, 3], engine=RelayEngine(tiny_lm, [1, 3], cloud.url, ask_info(cloud.url)))
        fields = open_fields(tiny_lm, (1, 3))
    c = raw_client(srv.url)
    sid = c.call("open", **fields)["sid"]
    frames = RawCodec().encode(torch.randn(1, 2, tiny_lm.hidden_size)).to_frames()
    rep = c.call("step", frames, sid=sid, seq=1, start=0, score=[5, 7])
    assert rep["ok"] is False and rep["code"] == p.BAD_FIELD and "single-cut server" in rep["msg"], rep
    rep = c.call("step", frames, sid=sid, seq=1, start=0, logprob=True)
    if u_shape:
        assert rep["ok"] is False and rep["code"] == p.BAD_FIELD and "log-probabilities" in rep["msg"], rep
        c.rid += 1  # a U-shape's reply carries the hidden state after its envelope: read the envelope
        c.send([p.pack(p.request("step", c.rid, sid=sid, seq=1, start=0)), *frames])
        reply = c.sock.recv_multipart()
        rep = p.unpack(reply[0])
        assert len(reply) > 1, rep
    else:  # a relay passes logprob on to the next hop, which samples
        assert rep["ok"] and isinstance(rep["lp"], float), rep
    assert rep["ok"] and rep["pos"] == 2, rep
