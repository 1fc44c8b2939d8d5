"""Signed bundles: `export keygen`, `export sign` (and `build --sign`), `runtime verify --trust`.

A bundle's hashes catch corruption; a signature catches tampering. Each way a bundle can fail to be one
the trusted key signed (unsigned, another key, a forged signature, a manifest changed after signing,
with its hashes changed to match) is refused in one line before anything of it runs; a model file
changed behind a signed manifest fails its hash.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess

import pytest

from export.manifest import update_manifest
from runtime.bundle import SIGNATURE, sha256
from tests.test_cli import run
from tests.test_failures import one_line_exit_2


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    made = run("export", "keygen", "--out", str(folder / "release"))
    assert made.returncode == 0, made.stderr
    assert run("export", "keygen", "--out", str(folder / "stranger")).returncode == 0
    return folder


@pytest.fixture
def signed(built, keys, tmp_path):
    bundle = tmp_path / "dsc"
    shutil.copytree(built("dsc").bundle, bundle)
    done = run("export", "sign", str(bundle), str(keys / "release"))
    assert done.returncode == 0, done.stderr
    return bundle


def fingerprint_of(pub) -> str:
    from runtime.signing import fingerprint, load_public_key

    return fingerprint(load_public_key(pub))


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites_one(keys):
    assert stat.S_IMODE((keys / "release").stat().st_mode) == 0o600
    assert (keys / "release.pub").read_text().startswith("ssh-ed25519 AAAA")
    assert "PRIVATE KEY" not in (keys / "release.pub").read_text()
    text = one_line_exit_2(run("export", "keygen", "--out", str(keys / "release")))
    assert text == (f"error: --out '{keys / 'release'}': {keys / 'release'} exists; keygen never overwrites a key "
                    "(choose another name, or remove the old pair if nothing trusts it)")


def test_a_signed_bundle_verifies_against_its_key_and_names_the_signer(signed, keys):
    done = run("runtime", "verify", str(signed), "--trust", str(keys / "release.pub"))
    assert done.returncode == 0, done.stdout + done.stderr
    signer = fingerprint_of(keys / "release.pub")
    assert done.stdout.splitlines()[0] == f"ok    manifest signed by {signer}, the trusted key of {keys / 'release.pub'}"
    found = json.loads(run("runtime", "verify", str(signed), "--trust", str(keys / "release.pub"), "--json").stdout)
    assert found["signed_by"] == signer and found["passed"]
    signature = json.loads((signed / SIGNATURE).read_text())
    assert signature["key"] == signer and signature["algorithm"] == "ed25519"
    assert "PRIVATE" not in (signed / SIGNATURE).read_text()  # the key never enters the bundle


def tamper_manifest(bundle, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def loosen_bounds(manifest) -> None:
    for a in manifest["artifacts"]:
        a["bounds"] = {k: 1.0 for k in a["bounds"]}


def swap_model(bundle):
    """Another model file in place of the ONNX one, its hash written into the manifest to match."""
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"\0")
    tamper_manifest(bundle, lambda m: m["files"].update({"model.onnx": sha256(bundle / "model.onnx")}))


def forge(bundle):
    found = json.loads((bundle / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(found["signature"]))
    raw[0] ^= 1
    found["signature"] = base64.b64encode(bytes(raw)).decode()
    (bundle / SIGNATURE).write_text(json.dumps(found))


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / SIGNATURE).unlink(), "error: bundle dsc is not signed, and the key in {trust} must have signed "
                                         "it: sign it where it was built (python -m export sign BUNDLE KEY)"),
    (lambda b: tamper_manifest(b, loosen_bounds), "error: bundle dsc's manifest.json changed after it was signed"),
    (swap_model, "error: bundle dsc's manifest.json changed after it was signed"),
    (forge, "error: bundle dsc's signature does not verify with the trusted key {signer}: the signature is forged "
            "or damaged; refused"),
], ids=["unsigned", "bounds-loosened", "model-and-hash-swapped", "forged-signature"])
def test_a_bundle_its_key_did_not_sign_as_it_is_is_refused_in_one_line(signed, keys, tamper, message):
    tamper(signed)
    trust = keys / "release.pub"
    text = one_line_exit_2(run("runtime", "verify", str(signed), "--trust", str(trust)))
    assert text.startswith(message.format(trust=trust, signer=fingerprint_of(trust))), text


def test_a_bundle_signed_by_another_key_is_refused(signed, keys):
    text = one_line_exit_2(run("runtime", "verify", str(signed), "--trust", str(keys / "stranger.pub")))
    assert text == (f"error: bundle dsc is signed by {fingerprint_of(keys / 'release.pub')}, not by the trusted key "
                    f"{fingerprint_of(keys / 'stranger.pub')} ({keys / 'stranger.pub'}): refused")


def test_a_model_file_changed_behind_a_signed_manifest_fails_its_signed_hash(signed, keys):
    (signed / "model.onnx").write_bytes((signed / "model.onnx").read_bytes()[:-1])
    done = run("runtime", "verify", str(signed), "--trust", str(keys / "release.pub"))
    assert done.returncode == 1 and "FAIL  model.onnx has changed (sha256 differs from the manifest)" in done.stdout


def test_what_pack_and_deploy_write_later_leaves_the_signature_valid(signed, keys):
    """`pack`'s targets and the report deploy rewrites are not signed: the device never runs them."""
    (signed / "report.md").write_text((signed / "report.md").read_text() + "\n## Devices\n\nrows\n")
    update_manifest(signed, rehash=("report.md",), targets={"linux-aarch64": {"python": "3.11"}})
    done = run("runtime", "verify", str(signed), "--trust", str(keys / "release.pub"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_ssh_keygen_key_with_a_passphrase_signs_with_the_passphrase_from_the_environment(built, tmp_path):
    bundle = tmp_path / "dsc"
    shutil.copytree(built("dsc").bundle, bundle)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret words", "-f", str(key)], check=True)
    text = one_line_exit_2(run("export", "sign", str(bundle), str(key)))
    assert text == (f"error: key '{key}' is protected by a passphrase; set it in the environment variable "
                    "EDGE_EXPORT_KEY_PASSPHRASE")
    assert not (bundle / SIGNATURE).exists()
    env = {**os.environ, "EDGE_EXPORT_KEY_PASSPHRASE": "s3cret words"}
    assert run("export", "sign", str(bundle), str(key), env=env).returncode == 0
    assert run("runtime", "verify", str(bundle), "--trust", f"{key}.pub").returncode == 0


@pytest.mark.parametrize("key, message", [
    ("release.pub", "error: key '{k}' is a public key; signing takes the private key beside it"),
    ("missing", "error: key '{k}' cannot be read (No such file or directory); pass the private key"),
    ("rsa", "error: key '{k}' is not an ed25519 key; bundles are signed with ed25519"),
])
def test_a_key_that_cannot_sign_is_refused_before_the_build_starts(keys, tmp_path, key, message):
    if key == "rsa":
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(keys / "rsa")],
                       check=True)
    out = tmp_path / "out"
    text = one_line_exit_2(run("export", "build", "--variant", "dsc", "--sign", str(keys / key), "--out", str(out)))
    assert text.startswith(message.format(k=keys / key)), text
    assert not out.exists()  # nothing was built


def test_signing_refuses_a_bundle_whose_files_no_longer_match(built, keys, tmp_path):
    bundle = tmp_path / "dsc"
    shutil.copytree(built("dsc").bundle, bundle)
    (bundle / "golden.npz").write_bytes(b"")
    text = one_line_exit_2(run("export", "sign", str(bundle), str(keys / "release")))
    assert text.startswith(f"error: bundle '{bundle}' does not match its manifest (golden.npz has changed")
    assert not (bundle / SIGNATURE).exists()
