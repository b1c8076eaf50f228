"""Split inference across processes and machines over ZeroMQ.

    server = SplitServer(lm, cuts=[15], port=5555).start()          # or: splitinfer serve --port 5555
    gen = remote_generator(lm, [15], "tcp://127.0.0.1:5555")         # or: splitinfer generate --server ...
    link = SimulatedLink(gen.link, bandwidth_bps=10e6, rtt_s=0.05)   # a slower network, for experiments

Modules: `protocol` (envelope, validation, error codes), `payload` (codecs on the wire), `sessions`
(limits, eviction), `scheduler` (admission, batching, chunked prefill; no sockets), `server` (SplitServer:
the socket), `server_config` (ServerConfig: every setting, serve's flags), `serve_cmd` (`splitinfer serve`),
`client` (RemoteLink, remote_generator), `keys` (CurveZMQ key folders). The hostile-input, fault, load and
auth harness behind tests/reliability is `splitinfer_testing.reliability` (outside this package).

Protocol, version 1
-------------------
A server binds a ROUTER socket; a client connects a DEALER (a REQ socket works too). Each request and
each reply is one multipart message:

    frame 0      envelope: a msgpack map (<= 4 KiB), described below
    frames 1..   step only: the codec's frames, EncodedTensor.to_frames(): its JSON header
                 ({"codec", "v", "params", "dtype", "shape", "meta", ...}), then raw buffers (sent with
                 copy=False, so large prefill buffers are not copied by pyzmq)

Every request envelope has `v` (protocol version, int, must be 1), `op` (str) and `rid` (int request
id, echoed in the reply so a client can drop late replies). Unknown fields are refused (bump `v`).

    op     fields                                          ok reply fields
    open   fingerprint: str   (LoadedModel.fingerprint)    sid: str (random, server-made)
           cuts: [int]        (must equal the server's)    max_tokens, max_step_tokens,
           hidden: int        (hidden size at the cut)     max_message_bytes
           codec: {name, **params}  (Codec.spec(); "none" = raw tensor bytes)
           sampling: {temperature, top_k, top_p, seed}  (optional; default greedy)
           nonce: str         (optional; a resent open with the same nonce gets the same session)
    step   sid: str, seq: int >= 1 (1, 2, ... per session), tok: int (next token id), pos: int
           start: int (position of the first hidden state),   (session length after the step),
           logprob: bool (optional)                         seq: int, lp: float (if asked)
           draft: [int] (optional, 1..16 drafted ids; the   toks: [int] (with draft: the k accepted
             payload then has len(draft)+1 positions)         drafts, then the server's token;
           draft_p: [float] (optional, with draft)            tok == toks[-1], pos == start+k+1)
    close  sid                                              -
    info   -                                                model, fingerprint, cuts, hidden, sessions,
                                                            kv_bytes, curve, limits, ...
    ping   -                                                -

A step's payload decodes to shape (1, T, hidden), 1 <= T <= max_step_tokens, finite values. A step
with seq == last applied seq (and the same start) is a retry: the server answers with its cached
reply and applies nothing. Any other seq than last+1 is `bad_seq`.

Every reply envelope has `v`, `rid` and `ok` (bool); an error reply has `code` and `msg` instead of
the fields above. Codes (protocol.ERROR_CODES): bad_frame, bad_version, unknown_op, bad_field,
model_mismatch, cut_mismatch, bad_codec, bad_tensor, unknown_session, bad_seq, bad_position,
session_limit, token_limit, memory_limit, too_large, forbidden, quota (a client over its sessions or
tokens/s quota: `--max-sessions-per-client`, `--client-tokens-per-s`), internal. A bad message changes
nothing on the server and never stops it.

Size caps: ZMQ_MAXMSGSIZE (= max_message_bytes, per frame) makes libzmq drop a peer that sends a
larger frame, before we read it (no reply is possible then); a message whose frames together exceed
max_message_bytes gets `too_large`. The client checks sizes against the limit it learned at open.

Sessions: one KV cache per session; limits on sessions, tokens per session, total KV bytes, and idle
time (evicted sessions free their caches). After `unknown_session` the client opens a new session and
replays the encoded hidden states it kept; sampling is seeded by (seed, position), so the new session
produces the same tokens. With CurveZMQ on, only clients whose public keys are in the server's
allowed folder connect, and a session only answers the client key that opened it (`forbidden`).

Waiting for the other side
--------------------------
Each side sleeps in poll while the other computes. (Busy polling and rehearsing the step path on a
shadow model, `WaitPolicy` / `warm`, were removed in issue 24: they bought 2-3 % of a decode step at
about twice the CPU, README "Transport".)

Command line
------------
    splitinfer serve --model smollm2-135m-instruct --cut 15 --port 5555     # or: splitinfer serve port=5555
    splitinfer generate --server tcp://127.0.0.1:5555 --cut 15 "What is the capital of France?"
    splitinfer serve --device cuda --dtype bfloat16 --port 5555    # the server half on a GPU in bf16
    python -m splitinfer serve --model tiny-llama --cut 2 --port 5555   # the same command, any Python

Security
--------
Hidden states can be inverted back to the prompt, so across any real network turn CurveZMQ on:
`splitinfer keygen --dir keys` writes the server's pair, a client pair and allowed_clients/;
`splitinfer serve --host 0.0.0.0 --curve on --keys keys`; on the device set SPLITINFER_CURVE_KEYS to a
folder holding client.key_secret and server.key (or pass curve_keys= to remote_generator/RemoteLink).
`curve=auto` (the default) is off only on loopback; `serve` warns when it binds a non-loopback address
with curve off. The server never unpickles: envelopes are msgpack with extension types refused, codec
headers are JSON, every field is type- and range-checked before use, messages are capped in size, and
tokens per session and total KV-cache memory are bounded.
"""

from __future__ import annotations

_EXPORTS = {
    "SplitServer": "splitinfer.transport.server",
    "ServerConfig": "splitinfer.transport.server_config",
    "SessionLimits": "splitinfer.transport.sessions",
    "RemoteLink": "splitinfer.transport.client",
    "RemoteError": "splitinfer.transport.client",
    "TransportError": "splitinfer.transport.client",
    "TransportTimeout": "splitinfer.transport.client",
    "remote_generator": "splitinfer.transport.client",
    "SimulatedLink": "splitinfer.split.simulated",
    "RawCodec": "splitinfer.transport.payload",
    "PROTOCOL_VERSION": "splitinfer.transport.protocol",
    "ProtocolError": "splitinfer.transport.protocol",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so `splitinfer --help` (which imports serve_cmd/keygen_cmd) does not import torch.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'splitinfer.transport' has no attribute {name!r}")
