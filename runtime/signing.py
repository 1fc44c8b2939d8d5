"""Signed bundles: who made a bundle, not only whether it arrived whole.

A bundle's hashes live in its own manifest, so they catch corruption, not tampering: whoever can change
a file can change its hash too. `python -m export sign BUNDLE KEY` signs the manifest with an ed25519
key and writes `manifest.sig` beside it; `python -m runtime verify BUNDLE --trust KEY.pub` (and a kit's
installer, given the device's trusted key) refuses, each in one line, a bundle that is not signed, one
signed by another key or whose signature does not verify, and one whose manifest changed after signing,
before it checks every file against the signed hashes.

What is signed is the manifest but the two entries later steps write and a device never runs: `pack`'s
`targets` and the hash of report.md, which `export deploy` rewrites. The signature file records the
sha256 of what was signed, so that a changed manifest is told apart from a forged signature.

Keys are OpenSSH's: `export keygen` writes an ed25519 key pair as `ssh-keygen -t ed25519` would, and an
ed25519 key made by ssh-keygen signs as well (its passphrase, if any, from EDGE_EXPORT_KEY_PASSPHRASE,
never from the command line). The ed25519 arithmetic is the `cryptography` package's, imported only here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from .bundle import SIGNATURE
from .errors import UserError

ALGORITHM = "ed25519"
UNSIGNED_ENTRIES = ("targets",)  # written by `pack` after the build
UNSIGNED_FILES = ("report.md",)  # rewritten by `export deploy`; documentation, never run


def statement(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest in canonical JSON, without what later steps write."""
    signed = {k: v for k, v in manifest.items() if k not in UNSIGNED_ENTRIES}
    signed["files"] = {k: v for k, v in manifest.get("files", {}).items() if k not in UNSIGNED_FILES}
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def crypto(why: str):
    """The cryptography package's serialization and ed25519 modules, or a UserError saying `why` needs them."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UserError(f"{why} needs the cryptography package, not installed here: pip install cryptography "
                        "(a kit packed from a signed bundle carries it)") from None
    return serialization, ed25519


def fingerprint(public_key) -> str:
    """`SHA256:...` of the raw public key, as ssh-keygen -l prints an ed25519 key's."""
    serialization, _ = crypto("a key's fingerprint")
    raw = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(raw.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_file(path: Path, what: str, hint: str) -> bytes:
    """The bytes of a key file, or a UserError naming it (`what`: "key 'release'") and what to pass (`hint`)."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{what} cannot be read ({err.strerror or err}); {hint}") from None


def ed25519_only(key, what: str):
    """`key` where it is an ed25519 key, else a UserError naming it (`what`)."""
    _, ed25519 = crypto("signing")
    if not isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        raise UserError(f"{what} is not an ed25519 key; bundles are signed with ed25519 "
                        "(python -m export keygen, or ssh-keygen -t ed25519)")
    return key


def load_public_key(path: str | Path, option: str = "--trust"):
    """An ed25519 public key from an OpenSSH `.pub` line (or PEM), or a UserError naming the file."""
    serialization, _ = crypto(f"{option} (checking a bundle's signature)")
    path = Path(path)
    data = key_file(path, f"{option} {str(path)!r}", "pass the public key, KEY.pub as `python -m export keygen` "
                                                      "wrote it")
    try:
        key = (serialization.load_pem_public_key(data) if data.lstrip().startswith(b"-----")
               else serialization.load_ssh_public_key(data.strip()))
    except (ValueError, TypeError, IndexError):
        raise UserError(f"{option} {str(path)!r} is not a public key (expected an OpenSSH line "
                        "'ssh-ed25519 AAAA...', as KEY.pub of `python -m export keygen`)") from None
    return ed25519_only(key, f"{option} {str(path)!r}")


def read_signature(bundle_path: Path) -> dict[str, Any] | None:
    """The bundle's `manifest.sig`, None when it has none, or a UserError when it cannot be read as one."""
    path = Path(bundle_path) / SIGNATURE
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
        if not isinstance(found, dict) or found.get("algorithm") != ALGORITHM or not all(
                isinstance(found.get(k), str) for k in ("key", "signed", "signature")):
            raise ValueError
        return found
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not a signature edge-export wrote ({ALGORITHM}: key, signed, signature); "
                        "sign the bundle again with python -m export sign") from None


def check_signature(bundle_path: str | Path, manifest: dict[str, Any], trust: str | Path) -> str:
    """The signer's fingerprint when `manifest` is signed by the key in `trust`, else a UserError that says
    which of the ways it is not: unsigned, another key, a manifest changed after signing, a bad signature.
    (The files are then checked against the manifest's hashes by the caller.)"""
    name = Path(bundle_path).name
    found = read_signature(Path(bundle_path))
    if found is None:
        raise UserError(f"bundle {name} is not signed, and the key in {trust} must have signed it: sign it where "
                        "it was built (python -m export sign BUNDLE KEY)")
    key = load_public_key(trust)
    from cryptography.exceptions import InvalidSignature  # installed: load_public_key saw to it

    trusted = fingerprint(key)
    if found["key"] != trusted:
        raise UserError(f"bundle {name} is signed by {found['key']}, not by the trusted key {trusted} "
                        f"({trust}): refused")
    body = statement(manifest)
    if hashlib.sha256(body).hexdigest() != found["signed"]:
        raise UserError(f"bundle {name}'s manifest.json changed after it was signed (what it signs hashes to "
                        f"{hashlib.sha256(body).hexdigest()[:16]}..., the signature was made over "
                        f"{found['signed'][:16]}...): refused")
    try:
        key.verify(base64.b64decode(found["signature"], validate=True), body)
    except (InvalidSignature, ValueError):
        raise UserError(f"bundle {name}'s signature does not verify with the trusted key {trusted}: the "
                        f"signature is forged or damaged; refused") from None
    return trusted


def check_trusted(bundle_path: str | Path, trust: str | Path) -> str:
    """A bundle signed by the key in `trust` whose files all match the signed hashes: the signer's
    fingerprint, or a UserError naming what is wrong."""
    from .bundle import Bundle

    bundle = Bundle.open(bundle_path)
    signer = check_signature(bundle.path, bundle.manifest, trust)
    problems = bundle.check_files()
    if problems:
        raise UserError(f"bundle {bundle.path.name} is signed, but its files differ from the signed manifest: "
                        f"{'; '.join(problems)}; refused")
    return signer


def main(argv: list[str] | None = None) -> int:
    """`python -m runtime.signing BUNDLE TRUSTED.pub`: what a kit's installer runs before it installs a
    bundle on a device that trusts a key."""
    import sys

    bundle, trust = argv if argv is not None else sys.argv[1:]
    try:
        print(f"signed by {check_trusted(bundle, trust)}, the key {trust} holds")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
