"""Build properties: reproducible, and complete or absent."""

from __future__ import annotations

import json
import shutil

import pytest

from export import pipeline
from export.pipeline import BuildSettings, build
from runtime.files import atomic_file, clean_leftovers
from runtime.verify import verify


def test_same_variant_and_checkpoint_give_byte_identical_model_onnx(built, checkpoint_for, tmp_path):
    first = built("dsc")
    again = build(BuildSettings(variant="dsc", checkpoint=checkpoint_for("dsc"), out=tmp_path,
                                backends=("onnxruntime",), warmup=1, runs=3))
    assert again.manifest["files"]["model.onnx"] == first.manifest["files"]["model.onnx"]
    assert again.manifest["versions"] == first.manifest["versions"]


def test_a_build_that_dies_leaves_the_previous_bundle_and_no_leftovers(built, tmp_path, monkeypatch):
    shutil.copytree(built("dsc").bundle, tmp_path / "dsc")
    before = json.loads((tmp_path / "dsc" / "manifest.json").read_text())

    def interrupt(*args, **kwargs):  # a converter's own failure leaves its backend out; Ctrl-C stops the build
        raise KeyboardInterrupt("interrupted during conversion")

    monkeypatch.setattr(pipeline.REGISTRY["openvino"], "convert", interrupt)
    with pytest.raises(KeyboardInterrupt, match="interrupted during conversion"):
        build(BuildSettings(variant="dsc", out=tmp_path, warmup=1, runs=3))
    assert [p.name for p in tmp_path.iterdir()] == ["dsc"]
    assert json.loads((tmp_path / "dsc" / "manifest.json").read_text()) == before
    assert verify(tmp_path / "dsc").passed


def test_leftovers_of_a_killed_writer_are_cleaned_by_the_next(tmp_path):
    dead = tmp_path / ".dsc.partial-999999999"  # no such process
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"half")
    clean_leftovers(tmp_path, "dsc")
    assert not dead.exists()


def test_an_atomic_file_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "weights.pt"
    with pytest.raises(RuntimeError), atomic_file(dest) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(dest) as partial:
        partial.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [dest]
