"""`python -m export keygen --out KEY` and `python -m export sign BUNDLE KEY` (or `build --sign KEY`).

keygen writes an ed25519 key pair in OpenSSH's formats: KEY (the private key, mode 0600, never inside a
bundle) and KEY.pub (one line, what devices are given to trust). sign writes the bundle's `manifest.sig`
(see `runtime.signing`): only a bundle whose files match its manifest is signed, so a signature never
blesses a file changed since the build. A key is read from its file, never from an argument; a
passphrase, where the key has one, from the environment variable EDGE_EXPORT_KEY_PASSPHRASE.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from runtime.bundle import SIGNATURE
from runtime.errors import UserError
from runtime.files import atomic_file
from runtime.signing import ALGORITHM, crypto, ed25519_only, fingerprint, key_file, statement

from .pack import open_checked

PASSPHRASE = "EDGE_EXPORT_KEY_PASSPHRASE"


def keygen(out: str | Path) -> tuple[Path, str]:
    """Write the key pair `out` and `out`.pub; (the public key's path, its fingerprint). An existing key is
    never overwritten."""
    serialization, ed25519 = crypto("keygen")
    out = Path(out)
    public = out.with_name(out.name + ".pub")
    if not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    for path in (out, public):
        if path.exists():
            raise UserError(f"--out {str(out)!r}: {path} exists; keygen never overwrites a key (choose another name, "
                            "or remove the old pair if nothing trusts it)")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from its first byte
    with os.fdopen(descriptor, "wb") as f:
        f.write(private)
    public.write_bytes(line + b" edge-export\n")
    return public, fingerprint(key.public_key())


def load_private_key(path: str | Path):
    """An ed25519 private key from an OpenSSH or PEM file, or a UserError naming the file and what it takes."""
    serialization, _ = crypto("signing")
    path = Path(path)
    data = key_file(path, f"key {str(path)!r}", "pass the private key `python -m export keygen --out KEY` wrote "
                                                "(KEY, not KEY.pub)")
    if data.lstrip().startswith(b"ssh-"):
        raise UserError(f"key {str(path)!r} is a public key; signing takes the private key beside it")
    passphrase = os.environ.get(PASSPHRASE)
    loader = (serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data
              else serialization.load_pem_private_key)
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        key = loader(data, passphrase.encode() if passphrase else None)
    except UnsupportedAlgorithm as err:  # an encrypted OpenSSH key, without bcrypt
        raise UserError(f"key {str(path)!r} cannot be opened here ({err}): pip install bcrypt") from None
    except TypeError:  # encrypted and no passphrase, or a passphrase for a key without one
        raise UserError(f"key {str(path)!r} is " + ("protected by a passphrase; set it in the environment "
                        f"variable {PASSPHRASE}" if not passphrase else
                        f"not encrypted; unset {PASSPHRASE}")) from None
    except ValueError as err:
        wrong = "passphrase" in str(err).lower() or "decrypt" in str(err).lower() or "bad" in str(err).lower()
        raise UserError(f"key {str(path)!r} " + (f"does not open with the passphrase in {PASSPHRASE}" if wrong and
                        passphrase else "is not a private key (expected an OpenSSH or PEM ed25519 key, as "
                        "`python -m export keygen` writes)")) from None
    return ed25519_only(key, f"key {str(path)!r}")


def sign(bundle_dir: str | Path, key_path: str | Path) -> str:
    """Sign a bundle whose files match its manifest; its `manifest.sig` written whole; the key's fingerprint."""
    key = load_private_key(key_path)
    bundle = open_checked(bundle_dir, "a signature would bless that: rebuild it before signing")
    body = statement(bundle.manifest)
    signer = fingerprint(key.public_key())
    found = {"algorithm": ALGORITHM, "key": signer, "signed": hashlib.sha256(body).hexdigest(),
             "signature": base64.b64encode(key.sign(body)).decode()}
    with atomic_file(bundle.path / SIGNATURE) as partial:
        partial.write_text(json.dumps(found, indent=2) + "\n")
    return signer
