"""Migration signatures: a signed manifest of checksums beside the migrations.

`sign` writes ``signatures.json`` into the migrations directory: each migration file's
name mapped to its checksum (blake3 of the normalised bytes, as `discovery.checksum`), the
id of the public key, and an Ed25519 signature over the canonical manifest bytes::

    {"format":1,"algorithm":"ed25519","key_id":ID,"files":{NAME:CHECKSUM,...}}

(compact JSON, files sorted by name). The key id is the first 16 hex digits of the blake3
of the raw 32-byte public key. With ``require_signatures = true``, `check` runs before any
plan: a migration file of the directory that is unsigned (no manifest, or not in it),
modified (checksum differs), or under a manifest signed by a key not in ``trusted_keys``
(or whose signature does not verify) is refused, naming the file. Flywall's own shipped
migrations come with the package and are not checked.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
import msgspec

from flywall.core.appliance.keys import raw_or_hex
from flywall.core.model import errors

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flywall.core.appliance.workspace import Workspace
    from flywall.core.scripts.discovery import Migration

MANIFEST = "signatures.json"


class Manifest(msgspec.Struct, kw_only=True):
    """The content of ``signatures.json``."""

    format: int = 1
    algorithm: str = "ed25519"
    key_id: str
    files: dict[str, str]
    signature: str
    """Base64 Ed25519 signature over `signed_bytes`."""


class SignReport(msgspec.Struct, kw_only=True):
    """What `sign` wrote."""

    path: str
    key_id: str
    public_key: str
    """Hex: the value to add to `trusted_keys`."""
    files: list[str]


class SignatureRefused(errors.ValidationFailed):
    """A migration is unsigned, modified after signing, or signed by an untrusted key."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path


def signed_bytes(key_id: str, files: dict[str, str]) -> bytes:
    """Return the canonical bytes a manifest's signature covers."""
    files = dict(sorted(files.items()))
    return msgspec.json.encode(
        {"format": 1, "algorithm": "ed25519", "key_id": key_id, "files": files}
    )


def key_id(public_raw: bytes) -> str:
    """Name a public key: 16 hex digits of the blake3 of its raw bytes."""
    return blake3.blake3(public_raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key: 32 raw bytes, 64 hex characters, or PEM (PKCS#8).

    :raises UsageError: the file is missing or holds no Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise errors.UsageError(f"{path}: cannot read the signing key: {e.strerror}") from e
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as e:
            raise errors.UsageError(f"{path}: not a readable PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise errors.UsageError(f"{path}: the PEM key is not an Ed25519 key")
        return key
    seed = raw_or_hex(raw)
    if seed is None:
        raise errors.UsageError(
            f"{path}: not an Ed25519 private key (32 raw bytes, 64 hex characters or PEM)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)


def _public_raw(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _own_migrations(ws: Workspace) -> list[Migration]:
    """The migration files of the settings' directory (not the shipped package)."""
    directory = ws.paths.migrations_dir
    return [m for m in ws.migrations if Path(m.path).parent == directory]


def sign(ws: Workspace, key_path: Path) -> SignReport:
    """Write ``signatures.json`` for every migration file of the migrations directory.

    :raises UsageError: the key cannot be read, there is nothing to sign, or the manifest
        cannot be written.
    """
    from flywall.core.runtime import fileio

    key = load_private_key(key_path)
    public = _public_raw(key)
    ident = key_id(public)
    files = {Path(m.path).name: m.checksum for m in _own_migrations(ws)}
    if not files:
        raise errors.UsageError(f"{ws.paths.migrations_dir}: no migration files to sign")
    signature = key.sign(signed_bytes(ident, files))
    manifest = Manifest(
        key_id=ident,
        files=dict(sorted(files.items())),
        signature=base64.b64encode(signature).decode("ascii"),
    )
    path = ws.paths.migrations_dir / MANIFEST
    try:
        fileio.replace(path, msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    except OSError as e:
        with contextlib.suppress(OSError):  # leave nothing behind, not even the temp file
            fileio.remove_stale_temp(path)
        raise errors.UsageError(f"{path}: cannot write the manifest: {e.strerror}") from e
    return SignReport(path=str(path), key_id=ident, public_key=public.hex(), files=sorted(files))


def trusted_keys(ws: Workspace) -> dict[str, bytes]:
    """Return the trusted public keys by key id.

    :raises SettingsError: a key is neither 64 hex characters nor base64 of 32 bytes.
    """
    keys: dict[str, bytes] = {}
    for i, text in enumerate(ws.settings.trusted_keys):
        raw = raw_or_hex(text.encode()) if len(text.strip()) == 64 else None  # noqa: PLR2004
        if raw is None:
            try:
                raw = base64.b64decode(text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raw = b""
        if len(raw) != 32:  # noqa: PLR2004 - a raw Ed25519 public key
            raise errors.SettingsError(
                f"migration.trusted_keys[{i}]: not an Ed25519 public key "
                "(64 hex characters or base64 of 32 bytes)"
            )
        keys[key_id(raw)] = raw
    return keys


def check(ws: Workspace) -> None:
    """Refuse unsigned, modified or untrusted migration files (`require_signatures`).

    :raises SignatureRefused: naming the first file refused and why.
    """
    own = _own_migrations(ws)
    if not own:
        return
    first = own[0].path
    manifest_path = ws.paths.migrations_dir / MANIFEST
    try:
        manifest = msgspec.json.decode(manifest_path.read_bytes(), type=Manifest)
    except FileNotFoundError:
        raise SignatureRefused(first, f"unsigned: there is no {manifest_path}") from None
    except (OSError, msgspec.DecodeError) as e:
        raise SignatureRefused(str(manifest_path), f"unreadable manifest: {e}") from e
    trusted = trusted_keys(ws)
    public = trusted.get(manifest.key_id)
    if public is None:
        raise SignatureRefused(
            first,
            f"signed by key {manifest.key_id} ({manifest_path.name}), which is not in trusted_keys",
        )
    _verify_signature(manifest, public, manifest_path)
    for m in own:
        signed = manifest.files.get(Path(m.path).name)
        if signed is None:
            raise SignatureRefused(m.path, f"unsigned: not in {manifest_path.name}")
        if signed != m.checksum:
            raise SignatureRefused(
                m.path, f"modified after signing: checksum {m.checksum}, signed {signed}"
            )


def _verify_signature(manifest: Manifest, public: bytes, path: Path) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signature = base64.b64decode(manifest.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, signed_bytes(manifest.key_id, manifest.files)
        )
    except (InvalidSignature, binascii.Error, ValueError) as e:
        raise SignatureRefused(
            str(path),
            f"signature does not verify with trusted key {manifest.key_id}: "
            "the manifest was altered after signing",
        ) from e
