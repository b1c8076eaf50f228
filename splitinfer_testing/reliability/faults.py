"""Fault scenarios: a server SIGKILLed and restarted mid-generation, a client SIGKILLed mid-session."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from splitinfer.transport import SplitServer, TransportError, remote_generator
from splitinfer.transport.sessions import SessionLimits
from splitinfer_testing.reliability.common import CUT, SERVER_ARGS, prompt, reference_tokens, sampling
from splitinfer_testing.reliability.harness import Zygote


@dataclass
class KillResult:
    kills: int = 0
    kill_steps: list = field(default_factory=list)  # steps the client had done when each SIGKILL landed
    exit_codes: list = field(default_factory=list)
    replays: int = 0
    resends: int = 0
    identical: bool = False
    tokens: int = 0
    reference_text: str = ""
    text: str = ""
    seconds: float = 0.0
    error: str = ""


def run_kill_restart(lm, zygote: Zygote, kills: int = 4, new_tokens: int = 40,
                     timeout_s: float = 1.0) -> KillResult:
    """SIGKILL the server process `kills` times during one generation, restarting it on the same port
    each time; the client (Lazy Pirate + replay) must end with exactly the fault-free text.

    The second kill (when kills >= 2) lands while the client is replaying its session into the server
    that replaced the first one; the others land after given decode steps. The client uses the
    project's default codec, so the replay resends the encoded frames it kept."""
    res = KillResult()
    primary = zygote.spawn(args=SERVER_ARGS)
    procs = [primary]
    ids, smp = prompt(7, lm.vocab_size), sampling(7)
    try:
        primary.wait_ready()
        ref = remote_generator(lm, [CUT], primary.url, sampling=smp, timeout_s=10, retries=0)
        try:
            expected = ref.generate(ids, new_tokens, stop_at_eos=False)
        finally:
            ref.link.close()
        res.reference_text = expected.text

        gen = remote_generator(lm, [CUT], primary.url, sampling=smp, timeout_s=timeout_s, retries=30)
        link = gen.link
        n_step_kills = kills - (kills >= 2)
        at = [round((i + 1) * 0.7 * new_tokens / (n_step_kills + 1)) + 2 for i in range(n_step_kills)]
        triggers = [("step", k) for k in at]  # all in the first 70% of the generation
        if kills >= 2:
            triggers.insert(1, ("replay", 1))
        done = threading.Event()

        def reached(trigger) -> bool:
            return len(link.history) >= trigger[1] if trigger[0] == "step" else link.replays >= trigger[1]

        def killer() -> None:
            for trigger in triggers:
                deadline = time.monotonic() + 120
                while not reached(trigger) and not done.is_set() and time.monotonic() < deadline:
                    time.sleep(0.001)
                if done.is_set():
                    return
                res.kill_steps.append(len(link.history) if trigger[0] == "step" else f"replay of {trigger[1]}")
                res.exit_codes.append(procs[-1].sigkill())
                res.kills += 1
                # a fresh process on the same port; the client rides out its start (timeouts, resends, replay)
                procs.append(zygote.spawn(primary.port, SERVER_ARGS))

        t = threading.Thread(target=killer, daemon=True)
        t0 = time.monotonic()
        t.start()
        try:
            out = gen.generate(ids, new_tokens, stop_at_eos=False)
            res.text, res.tokens = out.text, len(out.token_ids)
            res.identical = out.token_ids == expected.token_ids and out.text == expected.text
        except TransportError as e:
            res.error = str(e)
        finally:
            done.set()
            t.join(30)
            res.seconds = time.monotonic() - t0
            res.replays, res.resends = link.replays, link.resends
            link.close()
    finally:
        for proc in procs:
            proc.kill()
    return res


# A client that needs only zmq and msgpack (starts in a blink): opens a session, prefills, then steps
# until killed, printing each step. Its frames are what RawCodec would send.
_CLIENT = """
import json, math, struct, sys, msgpack, zmq
url, fp, hidden, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = zmq.Context().socket(zmq.DEALER); sock.linger = 0; sock.connect(url)
def call(env, frames=()):
    sock.send_multipart([msgpack.packb(env), *frames])
    if not sock.poll(10000): sys.exit("no reply")
    rep = msgpack.unpackb(sock.recv_multipart()[-1])
    if not rep["ok"]: sys.exit(str(rep))
    return rep
def hidden_frames(t, k):
    h = {"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": [1, t, hidden], "meta": {}}
    return [json.dumps(h).encode(), struct.pack(f"<{t * hidden}f", *(math.sin(k + i) for i in range(t * hidden)))]
sid = call({"v": 1, "op": "open", "rid": 1, "fingerprint": fp, "cuts": [2], "hidden": hidden,
            "codec": {"name": "none"}})["sid"]
pos = 0
for seq in range(1, 10000):
    t = prefill if seq == 1 else 1
    call({"v": 1, "op": "step", "rid": seq + 1, "sid": sid, "seq": seq, "start": pos}, hidden_frames(t, seq))
    pos += t
    print("step", seq, flush=True)
"""


@dataclass
class EvictionResult:
    kv_bytes_before: int = 0
    kv_bytes_after: int = -1
    sessions_after: int = -1
    evicted: int = 0
    seconds_to_evict: float = float("nan")
    tensors_tracked: int = 0
    tensors_alive_after: int = -1
    session_object_freed: bool = False
    served_after: bool = False


def run_client_killed(lm, idle_timeout_s: float = 1.0, prefill: int = 128) -> EvictionResult:
    """SIGKILL a client mid-session: the server evicts its session after the idle limit and every KV
    tensor of that session is garbage (weak references to them die)."""
    res = EvictionResult()
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20, limits=SessionLimits(idle_timeout_s=idle_timeout_s)).start()
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, srv.url, lm.fingerprint, str(lm.hidden_size),
                               str(prefill)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines, stepping = [], threading.Event()  # set at "step 5", or when the client's output ends

        def read() -> None:
            for line in iter(client.stdout.readline, ""):
                lines.append(line)
                if line.startswith("step 5"):
                    stepping.set()
            stepping.set()

        threading.Thread(target=read, daemon=True).start()
        if not stepping.wait(30) or not any(line.startswith("step 5") for line in lines):
            raise RuntimeError(f"client did not reach step 5 (exit {client.poll()}): {''.join(lines)[-500:]}")
        with srv._lock:  # weak references only: holding the objects would keep them alive
            session_ref = [weakref.ref(s) for s in srv.sessions]
            tensor_refs = [weakref.ref(t) for s in srv.sessions for c in s.state.caches for t in c.tensors()]
        res.kv_bytes_before = srv.session_kv_bytes
        res.tensors_tracked = len(tensor_refs)
        client.kill()  # SIGKILL: no close, no goodbye
        client.wait(10)
        t_kill = time.monotonic()
        srv.wait_for_sessions(0, timeout=idle_timeout_s + 10)
        res.seconds_to_evict = time.monotonic() - t_kill
        res.sessions_after, res.kv_bytes_after = srv.session_count, srv.session_kv_bytes
        res.evicted = srv.info()["evicted"]
        gc.collect()
        res.tensors_alive_after = sum(r() is not None for r in tensor_refs)
        res.session_object_freed = len(session_ref) == 1 and session_ref[0]() is None
        gen = remote_generator(lm, [CUT], srv.url, codec="none", sampling=sampling(3), timeout_s=15, retries=0)
        try:
            res.served_after = gen.generate(prompt(3, lm.vocab_size), 8, stop_at_eos=False).token_ids == \
                reference_tokens(lm, 3, 8)
        finally:
            gen.link.close()
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(10)
        client.stdout.close()
        srv.stop()
    return res
