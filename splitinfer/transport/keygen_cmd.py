"""`splitinfer keygen`: CurveZMQ key pairs for an encrypted, authenticated server."""

from __future__ import annotations

import argparse

from splitinfer.errors import ConfigError

HELP = "write CurveZMQ key pairs (server + clients) for `splitinfer serve --curve on`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="keys", help="key folder to write (default: %(default)s)")
    p.add_argument("--client", action="append", default=None, metavar="NAME",
                   help="client key pair(s) to create and allow (repeatable; default: one named 'client')")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")


def device_instructions(key_dir: str, clients: tuple[str, ...]) -> list[str]:
    """Per client: which two files go to its device, under which names (the client reads client.key_secret
    and server.key from the folder SPLITINFER_CURVE_KEYS names)."""
    return [f"{name}: copy {key_dir}/{name}.key_secret and {key_dir}/server.key to the device as "
            "client.key_secret and server.key" for name in clients]


def main(args: argparse.Namespace) -> int:
    from splitinfer.transport.keys import make_key_folder

    clients = tuple(args.client or ["client"])
    try:
        d = make_key_folder(args.dir, clients, overwrite=args.force)
    except FileExistsError as e:  # keys are there already: the message says to pass --force
        raise ConfigError(str(e)) from None
    lines = [f"wrote CURVE keys to {d}/:",
             f"  server: serve with `splitinfer serve --curve on --keys {d}` (uses server.key_secret and "
             "allowed_clients/)"]
    lines += [f"  client {line}" for line in device_instructions(str(d), clients)]
    lines.append("  on each device: set SPLITINFER_CURVE_KEYS=<the folder holding those two files>")
    print("\n".join(lines))
    return 0
