"""CurveZMQ key pairs for `splitinfer serve --curve on` (pyzmq's certificate files, never pickles).

A key folder made by `splitinfer keygen --dir keys` holds:
    server.key, server.key_secret          the server's pair (the public half goes to every client)
    client.key, client.key_secret          a client's pair (the secret half stays on the device)
    allowed_clients/client.key             public keys the server accepts; add one file per device
"""

from __future__ import annotations

import shutil
from pathlib import Path


def create_keypair(directory: str | Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (secret, mode 0600) into `directory`."""
    import zmq.auth

    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"key name {name!r} must be letters, digits, '-' or '_'")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not overwrite and (public.exists() or secret.exists()):
        raise FileExistsError(f"{public} already exists; pass --force to replace it (clients holding the old "
                              "public key will be refused)")
    pub, sec = zmq.auth.create_certificates(str(d), name)
    Path(sec).chmod(0o600)
    return Path(pub), Path(sec)


def allow_client(directory: str | Path, public_key_file: str | Path) -> Path:
    """Copy a client's public key into DIR/allowed_clients/ so the server accepts it."""
    src = Path(public_key_file)
    if src.suffix != ".key":
        raise ValueError(f"{src} is not a public key file (.key); never copy a .key_secret to the server")
    allowed = Path(directory) / "allowed_clients"
    allowed.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, allowed / src.name))


def make_key_folder(directory: str | Path, clients: tuple[str, ...] = ("client",), *,
                    overwrite: bool = False) -> Path:
    """A complete folder: the server pair, one pair per client name, and those clients allowed."""
    d = Path(directory)
    if overwrite or not (d / "server.key_secret").exists():
        create_keypair(d, "server", overwrite=overwrite)
    for name in clients:
        pub, _ = create_keypair(d, name, overwrite=overwrite)
        allow_client(d, pub)
    return d
