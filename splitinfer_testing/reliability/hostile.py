"""Hostile input at volume: hypothesis draws message plans, a driver sends them to a live server.

A plan is a small tuple saying what to send (random frames, arbitrary msgpack, a valid envelope with
fields replaced/removed/added, a step whose codec header or buffers are corrupted, deep nesting, too many
frames, oversized messages). The driver turns it into frames against the server's live state (a "victim"
session, so corrupted steps reach the payload decoder with the right sequence number), sends it from a
DEALER, and checks the answer: every message gets a well-formed reply, except a frame over ZMQ_MAXMSGSIZE,
which libzmq answers by dropping the connection (ignored by design; we watch for the disconnect).

The plans themselves (hypothesis strategies) are in `hostile_plans`. ~520 lines: the driver is one piece
of state (the victim session, one session per real codec, the reply tally) that every method reads; split
further, each part would need all of it.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from splitinfer.transport import SplitServer, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.client import load_client_curve_keys
from splitinfer_testing.reliability.common import CUT, MAX_MESSAGE_BYTES, prompt, reference_tokens, sampling
from splitinfer_testing.reliability.harness import Dealer, ForkedServer
from splitinfer_testing.reliability.hostile_plans import (
    REAL_CODECS,
    bomb,
    float_values,
    json_value,
    plans,
    to_bytes,
)

REPLY_TIMEOUT_MS = 10_000  # generous: a busy shared CPU can stall the server process for seconds
BATCH = 10  # plans per hypothesis example: per-example overhead dominates, so draw them in tens


# -- the driver ------------------------------------------------------------------------------------

@dataclass
class HostileResult:
    tried: int = 0  # hostile messages sent
    answered_error: int = 0
    answered_ok: int = 0  # plans that turned out to be valid (e.g. a step with finite huge values)
    ignored: int = 0  # frame over MAXMSGSIZE: connection dropped by libzmq, no reply possible
    no_reply: int = 0
    malformed_reply: int = 0
    internal: int = 0  # replies with code "internal" (a server bug caught by its last-resort handler)
    housekeeping: int = 0  # our own valid messages (reopen the victim, close sessions a valid open made)
    codes: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)  # (plan, what happened), the first few
    rss: list = field(default_factory=list)  # (messages tried, server RSS bytes)
    seconds: float = 0.0
    server_alive: bool = True

    @property
    def bad(self) -> int:
        return self.no_reply + self.malformed_reply + self.internal


class ServerGone(RuntimeError):
    pass


class HostileDriver:
    """Sends plans to a live server and tallies the answers (see the module docstring)."""

    def __init__(self, url: str, fingerprint: str, cuts: list[int], hidden: int, max_message_bytes: int,
                 rss_of=None, is_alive=None, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.url, self.fingerprint, self.cuts, self.hidden = url, fingerprint, cuts, hidden
        self.curve = curve  # (client public, client secret, server public): an authenticated attacker
        self.cap = max_message_bytes
        self.rss_of = rss_of or (lambda: 0)
        self.is_alive = is_alive or (lambda: True)
        self.result = HostileResult()
        self.sock = Dealer(url, timeout_ms=REPLY_TIMEOUT_MS, curve=curve)
        self.rid = 10**6
        self.victim: str | None = None
        self.v_seq = self.v_pos = 0
        self.coded: dict[str, list] = {}  # real-codec sessions: name -> [sid, last seq, position]
        self._codecs: dict = {}
        self._open_victim()

    # -- housekeeping (valid requests of our own) ----------------------------------------------
    def _call(self, op: str, payload=(), **fields) -> dict:
        self.rid += 1
        self.result.housekeeping += 1
        self.sock.send([p.pack(p.request(op, self.rid, **fields)), *payload])
        rep = self._recv_matching(self.rid)
        if rep is None:
            raise ServerGone(f"no reply to our own {op!r} within {REPLY_TIMEOUT_MS} ms")
        return rep

    def _recv_matching(self, rid: int) -> dict | None:
        deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
        while (left := deadline - time.monotonic()) > 0:
            frames = self.sock.recv_frames(int(left * 1000) + 1)
            if frames is None:
                return None
            rep = p.unpack(frames[-1])
            if rep.get("rid") == rid:
                return rep
        return None

    def open_fields(self) -> dict:
        return {"fingerprint": self.fingerprint, "cuts": self.cuts, "hidden": self.hidden,
                "codec": {"name": "none"}, "sampling": {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "seed": 5}}

    def _open_victim(self) -> None:
        if self.victim:
            self._call("close", sid=self.victim)
        rep = self._call("open", **self.open_fields())
        if not rep.get("ok"):
            raise ServerGone(f"could not open the victim session: {rep}")
        self.victim, self.v_seq, self.v_pos = rep["sid"], 0, 0

    def _open_coded(self, name: str) -> list:
        old = self.coded.pop(name, None)
        if old:
            self._call("close", sid=old[0])
        rep = self._call("open", **dict(self.open_fields(), codec={"name": name}))
        if not rep.get("ok"):
            raise ServerGone(f"could not open a {name!r} session: {rep}")
        self.coded[name] = [rep["sid"], 0, 0]
        return self.coded[name]

    def close(self) -> None:
        try:
            for sid in [self.victim, *(c[0] for c in self.coded.values())]:
                if sid:
                    self._call("close", sid=sid)
        except ServerGone:
            pass
        self.sock.close()

    def victim_still_consistent(self) -> bool:
        """A good step on the victim session and on every real-codec session, at the sequence number
        and position we tracked, is applied normally: no refused message changed a session."""
        frames = self._step_frames(1, "float32", [], "exact", 3, "normal")
        rep = self._call("step", frames, sid=self.victim, seq=self.v_seq + 1, start=self.v_pos)
        ok = bool(rep.get("ok")) and rep.get("pos") == self.v_pos + 1 and rep.get("seq") == self.v_seq + 1
        for name, (_, seq, pos) in sorted(self.coded.items()):
            frames, rid, _ = self._coded_frames(("coded", name, 1, "normal", [], [], True, "right", 1))
            self.result.housekeeping += 1
            self.sock.send(frames)
            rep = self._recv_matching(rid) or {}
            ok = ok and bool(rep.get("ok")) and rep.get("pos") == pos + 1 and rep.get("seq") == seq + 1
        return ok

    def warm_up(self) -> None:
        """One good step in a session of every real codec, so first-use allocations (codec tables,
        the first forward pass) happen before the memory baseline is taken."""
        for name in REAL_CODECS:
            frames, rid, _ = self._coded_frames(("coded", name, 1, "normal", [], [], True, "right", 1))
            self.result.housekeeping += 1
            self.sock.send(frames)
            rep = self._recv_matching(rid)
            if not rep or not rep.get("ok"):
                raise ServerGone(f"a good {name!r} step was refused: {rep}")
            self.coded[name][1:] = [rep["seq"], rep["pos"]]

    # -- building messages -----------------------------------------------------------------------
    def _step_frames(self, t: int, dtype: str, header_mutations, buffers: str, k: int, values: str) -> list:
        shape = [1, t, self.hidden]
        header = {"codec": "none", "v": 1, "params": {}, "dtype": dtype, "shape": shape, "meta": {}}
        for m in header_mutations:
            if m[0] == "set":
                header[m[1]] = json_value(m[2])
            elif m[0] == "del":
                header.pop(m[1], None)
            elif m[0] == "add":
                header[m[1]] = json_value(m[2])
            elif m[0] == "dtype":
                header["dtype"] = m[1]
            elif m[0] == "shape":
                header["shape"] = m[1]
            elif m[0] == "hidden_delta":
                header["shape"] = [1, t, self.hidden + m[1]]
            elif m[0] == "codec_name":
                header["codec"] = m[1]
        n = t * self.hidden
        buf = to_bytes(float_values(n, values, k), dtype if dtype in ("float32", "float16", "bfloat16") else "float32")
        hdr = json.dumps(header, allow_nan=True).encode()
        if buffers == "garbage_header":
            hdr = bytes((k * 37 + i * 11) % 256 for i in range(k))
        elif buffers == "json_array":
            hdr = b"[" + hdr + b"]"
        elif buffers == "header_nan":
            hdr = hdr.replace(b'"v": 1', b'"v": NaN')
        frames = [hdr]
        if buffers == "truncate":
            frames.append(buf[: max(0, len(buf) - k)])
        elif buffers == "extend":
            frames.append(buf + b"\x7f" * k)
        elif buffers == "empty":
            frames.append(b"")
        elif buffers == "extra":
            frames += [buf] + [b"\x00" * 4] * (k % 5 + 1)
        elif buffers != "none":
            frames.append(buf)
        return frames

    def _coded_frames(self, plan) -> tuple[list, int, str]:
        import torch

        from splitinfer.codecs import build_codec
        from splitinfer.codecs.base import checksum

        _, name, t, values, header_ops, buffer_ops, resign, start_mode, k = plan
        sid, seq, pos = self.coded.get(name) or self._open_coded(name)
        codec = self._codecs.get(name) or self._codecs.setdefault(name, build_codec(name))
        x = torch.tensor(float_values(t * self.hidden, values, k), dtype=torch.float32).view(1, t, self.hidden)
        try:
            with warnings.catch_warnings():  # NaN cast to int codes: that is the point here
                warnings.simplefilter("ignore", RuntimeWarning)
                enc = codec.encode(x)
        except Exception:  # a codec may refuse non-finite input: send finite values then
            enc = codec.encode(torch.zeros(1, t, self.hidden))
        header = json.loads(json.dumps(enc.header))
        buffers = [bytes(b) for b in enc.buffers]
        meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
        for op in header_ops:
            keys = sorted(meta)
            if op[0] == "meta" and keys:
                meta[keys[op[1] % len(keys)]] = json_value(op[2])
            elif op[0] == "meta_del" and keys:
                meta.pop(keys[op[1] % len(keys)])
            elif op[0] == "meta_add":
                meta[op[1]] = json_value(op[2])
            elif op[0] == "top":
                header[op[1]] = json_value(op[2])
            elif op[0] == "compressed":
                meta["compressed"] = op[1]
        for op in buffer_ops:
            if not buffers:
                break
            i = op[1] % len(buffers)
            b = bytearray(buffers[i])
            if op[0] == "flip" and b:
                b[op[2] % len(b)] ^= 1 << op[3]
            elif op[0] == "trunc":
                del b[max(0, len(b) - op[2]):]
            elif op[0] == "extend":
                b += op[2]
            elif op[0] == "fill":
                b[:] = bytes([op[2]]) * len(b)
            elif op[0] == "bomb":  # a small buffer that inflates to 64 MiB
                b = bytearray(bomb(op[2]))
                meta["compressed"] = [1] * len(buffers)
            if op[0] == "drop":
                del buffers[i]
            elif op[0] == "dup":
                buffers.insert(i, buffers[i])
            else:
                buffers[i] = bytes(b)
        if resign:
            try:
                header["crc"] = checksum(header, buffers)
            except (TypeError, ValueError):
                pass
        rid = self._next_rid()
        seq_sent, start = seq + 1, pos if start_mode == "right" else pos + k
        env = p.pack(p.request("step", rid, sid=sid, seq=seq_sent, start=start))
        return [env, json.dumps(header, allow_nan=True).encode(), *buffers], rid, name

    def _next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def build(self, plan) -> tuple[list, int | None, str | None]:
        """(frames, rid the reply must echo or None, the session it steps: "none" (the victim), a real
        codec's name, or None)."""
        kind = plan[0]
        if kind == "frames":
            return list(plan[1]), None, None
        if kind == "msgpack":
            try:
                env = msgpack.packb(plan[1], use_bin_type=True)
            except (OverflowError, ValueError, TypeError):
                env = b"\xc1"
            return [env, *plan[2]], None, None
        if kind == "envelope":
            op, mutations = plan[1], plan[2]
            rid = self._next_rid()
            env = {"v": 1, "op": op, "rid": rid}
            payload: list = []
            if op == "open":
                env.update(self.open_fields(), nonce=f"n{rid}")
            elif op == "close":
                env["sid"] = "0" * 24
            elif op == "step":
                env.update(sid=self.victim, seq=self.v_seq + 1, start=self.v_pos)
                payload = self._step_frames(1, "float32", [], "exact", rid % 64 + 1, "normal")
            for m in mutations:
                if m[0] == "del":
                    env.pop(m[1], None)
                else:
                    env[m[1]] = m[2]
            try:
                frames = [msgpack.packb(env, use_bin_type=True), *payload]
            except (OverflowError, ValueError, TypeError):
                return [b"\xc1"], None, None
            echo = rid if env.get("rid") == rid and type(env.get("rid")) is int else None
            return frames, echo, "none" if op == "step" else None
        if kind == "codec":
            _, seq_mode, start_mode, t, dtype, hmut, buffers, k, values = plan
            seq = {"next": self.v_seq + 1, "retry": self.v_seq, "skip": self.v_seq + 2 + k, "zero": 0,
                   "huge": p.MAX_INT}[seq_mode]
            start = self.v_pos if start_mode == "right" else self.v_pos + k
            rid = self._next_rid()
            env = p.pack(p.request("step", rid, sid=self.victim, seq=seq, start=start))
            return [env, *self._step_frames(t, dtype, hmut, buffers, k, values)], rid, "none"
        if kind == "deep":
            _, key, depth, container = plan
            opener = b"\x91" if container == "list" else b"\x81\xa1a"
            deep = opener * depth + b"\x00"
            base = {"v": 1, "op": "ping", "rid": self._next_rid()}
            base.pop(key, None)
            raw = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in base.items())
            env = bytes([0x80 | (len(base) + 1)]) + raw + msgpack.packb(key) + deep
            return [env], None, None
        if kind == "deep_json":
            _, key, depth = plan
            header = {"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": [1, 1, self.hidden],
                      "meta": {}}
            text = json.dumps(header).replace(json.dumps({key: header[key]})[1:-1],
                                              f'"{key}": ' + "[" * depth + "]" * depth)
            env = p.pack(p.request("step", self._next_rid(), sid=self.victim, seq=self.v_seq + 1, start=self.v_pos))
            buf = to_bytes(float_values(self.hidden, "normal", depth), "float32")
            return [env, text.encode()[: 64 * 1024 + 100], buf], None, "none"
        if kind == "many_frames":
            rid = self._next_rid()
            return [p.pack(p.request("ping", rid)), *[b"f"] * plan[1]], rid, None
        if kind == "too_large":
            rid = self._next_rid()
            part = self.cap // plan[1] + 1
            env = p.pack(p.request("step", rid, sid=self.victim, seq=self.v_seq + 1, start=self.v_pos))
            return [env, *[b"\x00" * part] * plan[1]], rid, "none"
        if kind == "req":
            return [b"", *plan[1]] if plan[1] else [b""], None, None
        if kind == "coded":
            return self._coded_frames(plan)
        raise ValueError(f"unknown plan kind {kind!r}")

    # -- sending ---------------------------------------------------------------------------------
    def send(self, plan) -> None:
        r = self.result
        r.tried += 1
        r.kinds[plan[0]] = r.kinds.get(plan[0], 0) + 1
        if plan[0] == "oversize":
            self._send_oversize(plan)
        else:
            frames, echo, target = self.build(plan)
            self.sock.send(frames)
            rep = self.sock.recv_frames()
            if rep is None:
                self._fail(plan, "no reply")
                r.no_reply += 1
                if not self.is_alive():
                    raise ServerGone("the server process died")
                self.sock.close()  # a late reply must not be taken for the next message's
                self.sock = Dealer(self.url, timeout_ms=REPLY_TIMEOUT_MS, curve=self.curve)
                return
            self._check_reply(plan, rep, echo, target)
        if r.tried % 250 == 0:
            r.rss.append((r.tried, self.rss_of()))

    def _check_reply(self, plan, frames: list[bytes], echo: int | None, target: str | None) -> None:
        r = self.result
        try:
            rep = p.unpack(frames[-1])
        except p.ProtocolError as e:
            r.malformed_reply += 1
            self._fail(plan, f"reply is not msgpack: {e}")
            return
        ok = rep.get("ok")
        well_formed = (rep.get("v") == p.PROTOCOL_VERSION and isinstance(ok, bool) and "rid" in rep
                       and (ok or (rep.get("code") in p.ERROR_CODES and isinstance(rep.get("msg"), str)
                                   and rep["msg"])))
        if not well_formed or (echo is not None and rep.get("rid") != echo):
            r.malformed_reply += 1
            self._fail(plan, f"malformed reply {str(rep)[:200]}")
            return
        if not ok:
            r.answered_error += 1
            r.codes[rep["code"]] = r.codes.get(rep["code"], 0) + 1
            if rep["code"] == p.INTERNAL:
                r.internal += 1
                self._fail(plan, f"internal error: {rep['msg'][:300]}")
            elif target and rep["code"] in (p.TOKEN_LIMIT, p.UNKNOWN_SESSION):
                # the session is full (or a valid mutated close ended it): start it over
                self._open_victim() if target == "none" else self._open_coded(target)
            return
        r.answered_ok += 1
        seq = rep.get("seq")
        if target == "none" and isinstance(seq, int) and seq == self.v_seq + 1:
            self.v_seq, self.v_pos = seq, rep["pos"]
        elif target in self.coded and isinstance(seq, int) and seq == self.coded[target][1] + 1:
            self.coded[target][1:] = [seq, rep["pos"]]
        elif isinstance(rep.get("sid"), str):  # a valid open slipped through: do not hold its session
            self._call("close", sid=rep["sid"])

    def _send_oversize(self, plan) -> None:
        """One frame over ZMQ_MAXMSGSIZE on a throwaway connection: the server must drop the peer."""
        r = self.result
        d = Dealer(self.url, timeout_ms=REPLY_TIMEOUT_MS, curve=self.curve)
        mon = d.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        try:
            d.send([p.pack(p.request("ping", 1)), b"\x00" * (self.cap + plan[1])])
            deadline = time.monotonic() + REPLY_TIMEOUT_MS / 1000
            dropped = False
            while not dropped and (left := deadline - time.monotonic()) > 0:
                if mon.poll(int(left * 1000) + 1, zmq.POLLIN):
                    dropped = recv_monitor_message(mon)["event"] == zmq.EVENT_DISCONNECTED
            if dropped and d.recv_frames(0) is None:
                r.ignored += 1
            else:
                r.no_reply += 1
                self._fail(plan, "an oversized frame neither dropped the connection nor was refused")
        finally:
            d.sock.disable_monitor()
            mon.close(linger=0)
            d.close()

    def _fail(self, plan, what: str) -> None:
        seen = {w[:60] for _, w in self.result.failures}
        if len(self.result.failures) < 12 and what[:60] not in seen:
            self.result.failures.append((repr(plan)[:300], what))

    # -- the hypothesis loop ---------------------------------------------------------------------
    def run(self, n_messages: int, seed: int | None = None, time_limit_s: float = 600.0) -> HostileResult:
        """Send plans drawn by hypothesis until `n_messages` of them were refused or dropped (at most
        `time_limit_s` seconds)."""
        t0 = time.monotonic()
        r = self.result
        self.warm_up()
        r.rss.append((0, self.rss_of()))

        def body(batch):
            if time.monotonic() - t0 > time_limit_s:
                return
            for plan in batch:
                self.send(plan)

        for _ in range(4):  # later rounds make up for plans that turned out valid (answered ok)
            left = n_messages - (r.tried - r.answered_ok)
            if left <= 0 or time.monotonic() - t0 > time_limit_s:
                break
            run = settings(max_examples=-(-left // BATCH), database=None, deadline=None, phases=[Phase.generate],
                           suppress_health_check=list(HealthCheck), print_blob=False)(
                given(st.lists(plans(), min_size=BATCH, max_size=BATCH))(body))
            if seed is not None:
                run = hypothesis_seed(seed + _)(run)
            try:
                run()
            except ServerGone:
                r.server_alive = False
                break
        r.seconds = time.monotonic() - t0
        r.server_alive = r.server_alive and self.is_alive()
        r.rss.append((r.tried, self.rss_of()))
        return r


# -- the scenarios ----------------------------------------------------------------------------------

def run_hostile(lm, server: ForkedServer, n_messages: int, seed: int | None = None,
                time_limit_s: float = 600.0) -> tuple[HostileResult, bool, bool]:
    """(tally, victim session still consistent, a good generation afterwards equals its reference)."""
    from splitinfer_testing.reliability.hostile import HostileDriver  # needs hypothesis

    driver = HostileDriver(server.url, lm.fingerprint, [CUT], lm.hidden_size, MAX_MESSAGE_BYTES,
                           rss_of=server.rss, is_alive=server.alive)
    try:
        result = driver.run(n_messages, seed=seed, time_limit_s=time_limit_s)
        consistent = result.server_alive and driver.victim_still_consistent()
    finally:
        driver.close()
    good = False
    if server.alive():
        gen = remote_generator(lm, [CUT], server.url, codec="none", sampling=sampling(0), timeout_s=15, retries=0)
        try:
            good = gen.generate(prompt(0, lm.vocab_size), 12, stop_at_eos=False).token_ids == \
                reference_tokens(lm, 0, 12)
        finally:
            gen.link.close()
    return result, consistent, good


def run_hostile_authenticated(lm, key_dir: str | Path, n_messages: int = 1000,
                              time_limit_s: float = 120.0) -> tuple[HostileResult, bool, bool, int]:
    """The same hostile plans from an allowed CurveZMQ client (the session-owner checks run on every
    message). Returns (tally, sessions consistent, server alive, `forbidden` replies)."""
    from splitinfer.transport.keys import make_key_folder
    from splitinfer.transport.server import CurveConfig
    from splitinfer_testing.reliability.hostile import HostileDriver  # needs hypothesis

    keys = make_key_folder(Path(key_dir) / "keys", ("client",))
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20, max_message_bytes=MAX_MESSAGE_BYTES,
                      curve=CurveConfig(str(keys / "server.key_secret"), str(keys / "allowed_clients"))).start()
    try:
        def alive() -> bool:
            return srv.serving

        driver = HostileDriver(srv.url, lm.fingerprint, [CUT], lm.hidden_size, MAX_MESSAGE_BYTES, is_alive=alive,
                               curve=load_client_curve_keys(keys))
        try:
            result = driver.run(n_messages, time_limit_s=time_limit_s)
            consistent = result.server_alive and driver.victim_still_consistent()
        finally:
            driver.close()
        return result, consistent, alive(), srv.info()["errors"].get(p.FORBIDDEN, 0)
    finally:
        srv.stop()
