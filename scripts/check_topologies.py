"""Check the README's topology commands on the real model: `splitinfer serve` processes on loopback.

    python scripts/check_topologies.py                       # SmolLM2-135M, 8 prompts, 16 tokens each
    python scripts/check_topologies.py --tokens 32 --out experiments/topologies/check_smollm2.txt

Starts the processes the README starts (cloud `serve --cut 20`, edge `serve --cut 8,20 --next`, a U-shape
`serve --cut 4,26 --u-shape`, three replicas `serve --cut 15`), then for each prompt compares the greedy
tokens of the served topology (the device side in this process, codec none) with the in-process
reference: the in-process chain at the same cuts (relay, replicas) or the unsplit model (U-shape). One
`splitinfer generate ... --stats` per topology shows the command line works and prints the per-hop
figures. Every process it starts is killed on exit. Exit status 1 if any text differs.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Name three primary colors.", "Write a haiku about rain.",
           "What is 12 times 7?", "Who wrote Hamlet?", "Give a synonym for happy.",
           "Why is the sky blue?", "Translate 'good morning' to Spanish."]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `python -m splitinfer serve` process; `url` once it has printed its ready line."""

    def __init__(self, *args: str, timeout_s: float = 180.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "splitinfer", "serve", "--port", str(self.port),
                                      "--threads", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=ENV, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        for line in self.proc.stdout:
            if line.startswith("splitinfer serve:"):
                return
            if time.monotonic() > deadline:
                break
        self.kill()
        raise RuntimeError(f"serve {' '.join(args)} did not start")

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def cli_generate(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "splitinfer", "generate", PROMPTS[0], "--max-new-tokens", "16",
                          "--threads", "1", "--stats", *args], capture_output=True, text=True, env=ENV, timeout=300)
    return (out.stdout.strip() + " | " + " ".join(out.stderr.strip().splitlines()[-3:])).strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    import torch

    from splitinfer.models import load_model
    from splitinfer.split import in_process_generator
    from splitinfer.transport.topology import connect

    torch.set_num_threads(1)
    lm = load_model("smollm2-135m-instruct")
    lines, ok = [], True
    servers: list[Server] = []
    try:
        cloud = Server("--cut", "20")
        servers.append(cloud)
        edge = Server("--cut", "8,20", "--next", cloud.url)
        u = Server("--cut", "4,26", "--u-shape")
        replicas = [Server("--cut", "15") for _ in range(3)]
        servers += [edge, u, *replicas]
        replica_list = ",".join(r.url for r in replicas)
        cases = [("relay 8,20", connect(lm, [8, 20], edge.url, codec="none", timeout_s=60, retries=0),
                  in_process_generator(lm, [8, 20])),
                 ("u-shape 4,26", connect(lm, [4, 26], u.url, codec="none", u_shape=True, timeout_s=60, retries=0),
                  in_process_generator(lm, [lm.num_layers])),
                 ("replicas 15", connect(lm, [15], replica_list, codec="none", timeout_s=60, retries=0),
                  in_process_generator(lm, [15]))]
        for name, served, reference in cases:
            same = 0
            for text in PROMPTS:
                a = served.generate(text, args.tokens).token_ids
                b = reference.generate(text, args.tokens).token_ids
                same += a == b
            served.link.close()
            ok &= same == len(PROMPTS)
            lines.append(f"{name}: {same}/{len(PROMPTS)} prompts give the reference's greedy tokens ({args.tokens} tokens)")
        lines.append("generate --cut 8,20 --server EDGE: " + cli_generate("--cut", "8,20", "--server", edge.url))
        lines.append("generate --cut 4,26 --u-shape: " + cli_generate("--cut", "4,26", "--u-shape", "--server", u.url,
                                                                     "--codec", "int8", "--down-codec", "int8"))
        lines.append("generate --server R1,R2,R3: " + cli_generate("--cut", "15", "--server", replica_list))
    finally:
        for srv in servers:
            srv.kill()
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
