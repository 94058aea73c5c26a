"""Migration signatures: with require_signatures, only files signed by a trusted key run."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

import pytest
from conftest import Appliance, create_table_migration
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flywall.core import commands
from flywall.core.scripts import signing

if TYPE_CHECKING:
    from pathlib import Path


def new_key(tmp_path: Path, name: str, *, pem: bool = False) -> tuple[Path, bytes]:
    """Write a fresh Ed25519 private key; return its path and raw public key."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / name
    if pem:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return path, public


def require(app: Appliance, *trusted: str) -> None:
    keys = ", ".join(f'"{k}"' for k in trusted)
    app.configure(f"require_signatures = true\ntrusted_keys = [{keys}]\n")


@pytest.fixture
def signed(appliance: Appliance, tmp_path: Path) -> tuple[Appliance, Path]:
    """Two migrations, signed by a trusted key; returns the appliance and the key file."""
    create_table_migration(appliance, "202401010001", "hosts")
    create_table_migration(appliance, "202401010002", "leases")
    key, public = new_key(tmp_path, "vendor.key")
    require(appliance, public.hex())
    result = appliance.cli("sign", "--key", str(key))
    assert result.returncode == 0, result.stderr
    assert f"public key (for trusted_keys): {public.hex()}" in result.stdout
    return appliance, key


def started(app: Appliance) -> list[dict[str, object]]:
    return commands.history(app.workspace(), kinds=("MigrationStarted",))


def test_signed_migrations_from_a_trusted_key_run(signed: tuple[Appliance, Path]) -> None:
    app, _ = signed
    manifest = json.loads((app.migrations_dir / "signatures.json").read_text())
    assert sorted(manifest["files"]) == [
        "202401010001_create_hosts.sql",
        "202401010002_create_leases.sql",
    ]

    result = app.cli("migrate")

    assert result.returncode == 0, result.stderr
    assert len(started(app)) == 2


def test_a_migration_modified_after_signing_is_refused_naming_it(
    signed: tuple[Appliance, Path],
) -> None:
    app, _ = signed
    path = app.migrations_dir / "202401010002_create_leases.sql"
    path.write_text(path.read_text().replace("name TEXT", "name TEXT, evil TEXT"))

    result = app.cli("migrate")

    assert result.returncode == 4
    assert result.stderr.startswith(f"FAILED: {path}: modified after signing: checksum ")
    assert started(app) == []  # refused before anything ran


def test_an_unsigned_migration_is_refused_by_migrate_and_rollback(
    signed: tuple[Appliance, Path],
) -> None:
    app, _ = signed
    app.migrate()
    extra = create_table_migration(app, "202401010003", "zones")

    for args in (("migrate",), ("rollback", "--steps", "1")):
        result = app.cli(*args)
        assert result.returncode == 4
        assert result.stderr == f"FAILED: {extra}: unsigned: not in signatures.json\n"
    assert len(started(app)) == 2


def test_no_manifest_means_unsigned(appliance: Appliance, tmp_path: Path) -> None:
    path = create_table_migration(appliance, "202401010001", "hosts")
    _, public = new_key(tmp_path, "vendor.key")
    require(appliance, public.hex())

    result = appliance.cli("migrate")

    assert result.returncode == 4
    assert result.stderr == (
        f"FAILED: {path}: unsigned: there is no {appliance.migrations_dir / 'signatures.json'}\n"
    )


def test_a_manifest_re_signed_by_an_unknown_key_is_refused(
    signed: tuple[Appliance, Path], tmp_path: Path
) -> None:
    app, _ = signed
    other, public = new_key(tmp_path, "attacker.key", pem=True)
    assert app.cli("sign", "--key", str(other)).returncode == 0

    result = app.cli("migrate")

    assert result.returncode == 4
    first = app.migrations_dir / "202401010001_create_hosts.sql"
    assert result.stderr == (
        f"FAILED: {first}: signed by key {signing.key_id(public)} (signatures.json), "
        "which is not in trusted_keys\n"
    )
    assert started(app) == []


def test_a_manifest_edited_to_match_a_modified_file_fails_its_signature(
    signed: tuple[Appliance, Path],
) -> None:
    app, _ = signed
    path = app.migrations_dir / "202401010002_create_leases.sql"
    path.write_text(path.read_text() + "-- harmless?\n")
    manifest_path = app.migrations_dir / "signatures.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name] = app.workspace().migration("202401010002").checksum  # type: ignore[union-attr]
    manifest_path.write_text(json.dumps(manifest))

    result = app.cli("migrate")

    assert result.returncode == 4
    assert result.stderr.startswith(f"FAILED: {manifest_path}: signature does not verify")


def test_pem_keys_and_base64_trusted_keys_work(appliance: Appliance, tmp_path: Path) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    key, public = new_key(tmp_path, "vendor.pem", pem=True)
    require(appliance, base64.b64encode(public).decode())
    report = commands.sign(appliance.workspace(), key)
    assert report.key_id == signing.key_id(public)

    appliance.migrate()


def test_signatures_are_not_checked_unless_required(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")

    appliance.migrate()


def test_bad_trusted_keys_and_signing_keys_are_named(appliance: Appliance, tmp_path: Path) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not a key")

    result = appliance.cli("sign", "--key", str(bad))
    assert result.returncode == 2
    assert result.stderr == f"FAILED: {bad}: not an Ed25519 private key (32 raw bytes, 64 hex characters or PEM)\n"  # fmt: skip

    key, _ = new_key(tmp_path, "vendor.key")
    assert appliance.cli("sign", "--key", str(key)).returncode == 0
    require(appliance, "abcd")
    result = appliance.cli("migrate")
    assert result.returncode == 2
    assert "migration.trusted_keys[0]: not an Ed25519 public key" in result.stderr


def test_a_manifest_that_cannot_be_written_is_one_line_and_leaves_nothing(
    appliance: Appliance, tmp_path: Path
) -> None:
    """A read-only migrations folder ended in a traceback; a directory in the manifest's
    place stands for it here, so the test holds for root too."""
    create_table_migration(appliance, "202401010001", "hosts")
    manifest = appliance.migrations_dir / "signatures.json"
    manifest.mkdir()
    before = sorted(p.name for p in appliance.migrations_dir.iterdir())
    key, _ = new_key(tmp_path, "vendor.key")

    result = appliance.cli("sign", "--key", str(key))

    assert result.returncode == 2
    assert result.stderr == f"FAILED: {manifest}: cannot write the manifest: Is a directory\n"
    assert sorted(p.name for p in appliance.migrations_dir.iterdir()) == before
