"""Ed25519 keys the controller signs its audit trail and job attestations with.

Kept in the data directory as PKCS#8 PEM with mode 0600, created on first use; the public half is exported
so auditors and deploy steps can verify without access to the controller."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from orchestrator.platform.files import fsync_dir, write_atomic


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """Loads the key at `path`, creating it atomically (0600) if missing; refuses a group/world-readable key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        fsync_dir(path.parent)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by group/others; run chmod 600 on it")
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return loaded


def export_public_key(path: Path, key: Ed25519PrivateKey | Ed25519PublicKey) -> None:
    """Publishes the PEM public key that auditors and deploy steps verify with (mode 0644), replaced atomically
    so a reader never sees half a key."""
    write_atomic(path, public_pem(key), mode=0o644)


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
