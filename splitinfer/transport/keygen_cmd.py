"""`splitinfer keygen`: CurveZMQ key pairs for an encrypted, authenticated server."""

from __future__ import annotations

import argparse

HELP = "write CurveZMQ key pairs (server + clients) for `splitinfer serve --curve on`"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="keys", help="key folder to write (default: %(default)s)")
    p.add_argument("--client", action="append", default=None, metavar="NAME",
                   help="client key pair(s) to create and allow (repeatable; default: one named 'client')")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")


def main(args: argparse.Namespace) -> int:
    from splitinfer.transport.keys import make_key_folder

    clients = tuple(args.client or ["client"])
    d = make_key_folder(args.dir, clients, overwrite=args.force)
    print(f"wrote CURVE keys to {d}/:\n"
          f"  server:  serve with `splitinfer serve --curve on --keys {d}` (uses server.key_secret and "
          f"allowed_clients/)\n"
          f"  clients: {', '.join(clients)}; copy {{name}}.key_secret and server.key to the device as "
          f"client.key_secret and server.key, and set SPLITINFER_CURVE_KEYS=<that folder>")
    return 0
