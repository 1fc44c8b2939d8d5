"""One file to copy to a device: `<name>.tar.gz` and its `.sha256` beside it.

Only a bundle whose files match its manifest is packed. The archive holds one
folder, named after the bundle, that `python -m runtime verify` accepts once
unpacked; `sha256sum -c <name>.tar.gz.sha256` checks the copy.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from runtime.bundle import MANIFEST, Bundle, sha256
from runtime.errors import UserError, check_folder
from runtime.files import atomic_file


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(bundle_dir: str | Path, dest: str | Path | None = None) -> Path:
    """Write `<dest>/<name>.tar.gz` (default: beside the bundle) and its checksum file; return the archive."""
    bundle = Bundle.open(bundle_dir)
    problems = bundle.check_files()
    if problems:
        raise UserError(f"bundle {str(bundle.path)!r} does not match its manifest ({'; '.join(problems)}); "
                        "rebuild it before packing")
    name = bundle.path.resolve().name
    dest = Path(dest) if dest is not None else bundle.path.resolve().parent
    check_folder(dest, "--out", "expected a folder for the archive (created if missing)")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.tar.gz"
    with atomic_file(archive) as partial, tarfile.open(partial, "w:gz") as tar:
        for file in sorted([*bundle.manifest["files"], MANIFEST]):
            tar.add(bundle.path / file, arcname=f"{name}/{file}", filter=_normalise)
    with atomic_file(archive.with_name(archive.name + ".sha256")) as partial:
        partial.write_text(f"{sha256(archive)}  {archive.name}\n")
    return archive
