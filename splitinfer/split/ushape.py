"""The U-shaped split: the device runs layers [0, a) and [b, L) with the final norm and the head, the
server runs [a, b) and sends its hidden state back through a downlink codec; sampling stays on the
device, so the server sees neither the prompt's tokens nor the answer's tokens or logits.

    ids ─▶ DeviceHalf [0,a) ─▶ uplink codec ─▶ server MiddleHalf [a,b) ─▶ downlink codec ─┐
    next token ◀── sample ◀── DeviceTail [b,L) + norm + head ◀── decode ◀─────────────────┘

`UShapeLink` makes this a `Link` like any other (step(enc, start) -> token), so `SplitGenerator`
drives it unchanged; its inner link returns the server's encoded frames instead of a token
(`InProcessMiddleLink` here, `transport.topology.RemoteHiddenLink` over ZeroMQ).
"""

from __future__ import annotations

import torch

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.errors import ConfigError
from splitinfer.models import LoadedModel, Stage, split_model, validate_cuts
from splitinfer.split.device import DeviceHalf
from splitinfer.split.generator import SplitGenerator, bind_to
from splitinfer.split.link import LinkWrapper, Traffic, VerifyRequest, phase_of, tokens_of
from splitinfer.split.middle import MiddleHalf, MiddleSession
from splitinfer.split.placement import Placement, place_stages
from splitinfer.split.server import SamplingConfig, cpu_logits, sample_token
from splitinfer.split.wire import codec_spec, resolve_codec


def check_ushape_cuts(cuts, num_layers: int) -> list[int]:
    """Two cuts a < b < L: the server runs [a, b) and the device keeps at least one layer before the head."""
    cuts = validate_cuts(cuts, num_layers)
    if len(cuts) != 2:
        raise ConfigError(f"--u-shape needs two cuts a,b (the server runs layers [a, b)), got {cuts}; e.g. "
                          f"--cut 2,{max(3, num_layers - 2)} --u-shape")
    if cuts[1] >= num_layers:
        raise ConfigError(f"U-shape --cut {cuts[0]},{cuts[1]} leaves no layers on the device after the server's: "
                          f"this model has {num_layers} layers, so b must be < {num_layers} (the device runs [b, "
                          f"{num_layers}) with the head); give a smaller b")
    return cuts


def check_downlink_codec(codec):
    """A downlink codec must be stateless: a session codec's decoder state could not follow a replay."""
    codec = resolve_codec(codec)
    if hasattr(codec, "encode_step"):
        raise ConfigError(f"downlink codec {codec.name!r} is a session codec (state across steps); the downlink "
                          "takes a stateless one (e.g. none, fp16, int8): drop the '_s' suffix")
    return codec


def decode_down(codec, frames, hidden_size: int, tokens: int) -> torch.Tensor:
    """The server's reply frames -> its hidden state (1, T, H) float32, checked (shape, finite values)."""
    try:
        enc = EncodedTensor.from_frames([memoryview(f) for f in frames])
        shape = enc.header.get("shape")
        if shape != [1, tokens, hidden_size]:
            raise ValueError(f"shape {str(shape)[:60]} is not [1, {tokens}, {hidden_size}]")
        h = codec.decode(enc).to(torch.float32).reshape(shape)
    except Exception as e:
        raise ConfigError(f"the server's downlink hidden state does not decode with {codec.name!r}: "
                          f"{str(e)[:300]}") from None
    if not bool(torch.isfinite(h).all()):
        raise ConfigError("the server's downlink hidden state holds NaN or infinite values")
    return h


class DeviceTail:
    """The device's last layers [b, L) with the final norm and the head, its KV cache, and the sampler
    (seeded by position exactly as a server session samples)."""

    def __init__(self, stage: Stage, sampling: SamplingConfig | None = None, placement: Placement | None = None):
        if not stage.is_last:
            raise ConfigError("the device tail must hold the chain's last stage (the head)")
        self.placement = placement or Placement()
        self.stage = place_stages([stage], self.placement)[0]
        self.sampling = sampling or SamplingConfig()
        self.reset()

    def reset(self) -> None:
        self.cache = self.stage.new_cache()

    @torch.no_grad()
    def token(self, hidden: torch.Tensor, start: int) -> int:
        """Run positions start..start+T-1 and sample the next token from the last one."""
        n = hidden.shape[1]
        pos = torch.arange(start, start + n, device=self.placement.device)[None]
        logits = self.stage(hidden.to(self.placement.device, self.placement.dtype), position_ids=pos,
                            cache=self.cache)
        return sample_token(cpu_logits(logits[0, -1]), self.sampling, start + n)


class UShapeLink(LinkWrapper):
    """A `Link` over a hidden-state link: the server's frames come back and the device tail turns them
    into the next token. `inner.step(enc, start)` returns the downlink frames; `inner.down_traffic`
    counts them."""

    def __init__(self, inner, tail: DeviceTail, down_codec, hidden_size: int) -> None:
        super().__init__(inner)
        self.tail = tail
        self.down_codec = down_codec
        self.hidden_size = hidden_size

    def step(self, enc, start: int) -> int:
        if isinstance(enc, VerifyRequest):
            raise ConfigError("a U-shaped split samples on the device: speculative verify steps are not supported")
        frames = self.inner.step(enc, start)
        return self.tail.token(decode_down(self.down_codec, frames, self.hidden_size, tokens_of(enc)), start)

    def reset(self) -> None:
        self.inner.reset()
        self.tail.reset()


class InProcessMiddleLink:
    """A hidden-state link with no network: up frames -> the middle slice -> down frames, both counted."""

    def __init__(self, middle: MiddleHalf, up_codec, down_codec) -> None:
        self.middle = middle
        self.up_codec = up_codec
        self.down_codec = down_codec
        self.reset()

    @property
    def bytes_up(self) -> int:
        return self.traffic.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.traffic.down_bytes

    def step(self, enc, start: int) -> list:
        frames = enc.to_frames()
        self.traffic.add_up(sum(memoryview(f).nbytes for f in frames), tokens_of(enc), phase_of(start, tokens_of(enc)))
        hidden = self.middle.decode(EncodedTensor.from_frames(frames), self.up_codec)
        self.session.forward(hidden, start)
        down = self.session.reply_fields()["_frames"]
        nbytes = sum(memoryview(f).nbytes for f in down)
        self.traffic.down_bytes += nbytes
        self.down_by_phase[phase_of(start, tokens_of(enc))] += nbytes
        return down

    def reset(self) -> None:
        self.session = self.middle.session()
        self.traffic = Traffic()
        self.down_by_phase = {"prefill": 0, "decode": 0}  # the downlink's bytes, as `traffic` counts the uplink's

    def close(self) -> None:
        pass


def ushape_finisher(down_codec) -> callable:
    """What a U-shape server's step replies: its slice's output for every position of the step, encoded
    with the session's downlink codec, as raw frames (`_frames`: no token, no logits)."""

    def finish(session: MiddleSession, want_logprob: bool) -> dict:
        if want_logprob:
            raise ConfigError("a U-shaped split samples on the device; the server has no log-probabilities")
        _, h = session.take_pending()
        codec = session.extra.get("down_codec", down_codec)
        return {"_frames": codec.encode(h).to_frames()}

    return finish


def ushape_middle(lm: LoadedModel, cuts, down_codec=None, *, placement: Placement | None = None) -> MiddleHalf:
    """The server half of a U-shape at `cuts` = [a, b]: layers [a, b), replying with hidden states."""
    cuts = check_ushape_cuts(cuts, lm.num_layers)
    return MiddleHalf([split_model(lm, cuts)[1]], ushape_finisher(check_downlink_codec(down_codec)),
                      placement=placement)


def ushape_device(lm: LoadedModel, cuts, codec=None, defense=None, sampling: SamplingConfig | None = None,
                  placement: Placement | None = None) -> tuple[DeviceHalf, DeviceTail]:
    """The device's two pieces of a U-shape: [0, a) (with the defense and the uplink codec) and [b, L)."""
    cuts = check_ushape_cuts(cuts, lm.num_layers)
    stages = split_model(lm, cuts)
    device = DeviceHalf(stages[0], codec=bind_to(resolve_codec(codec), lm, cuts[0]),
                        defense=bind_to(defense, lm, cuts[0]), placement=placement)
    return device, DeviceTail(stages[2], sampling, placement)


def in_process_ushape_generator(lm: LoadedModel, cuts, codec=None, down_codec=None,
                                sampling: SamplingConfig | None = None, defense=None, *,
                                placement: Placement | None = None,
                                server_placement: Placement | None = None) -> SplitGenerator:
    """A U-shaped split with both ends in this process (frames still cross as the wire carries them)."""
    device, tail = ushape_device(lm, cuts, codec, defense, sampling, placement)
    down = check_downlink_codec(down_codec if down_codec is not None else codec_spec(device.codec))
    middle = ushape_middle(lm, cuts, down, placement=server_placement)
    link = UShapeLink(InProcessMiddleLink(middle, device.codec, down), tail, down, lm.hidden_size)
    return SplitGenerator(lm, device, link)
