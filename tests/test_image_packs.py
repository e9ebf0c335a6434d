"""Image packs: one safetensors file of uint8 images per manifest kind, named from manifests as `<pack>#<index>`;
plain PNG paths still load; bad packs and references stop with the file named; the export command writes
the images back out as PNGs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from medvlm.data.export_images import export_images, main
from medvlm.data.image_packs import pack_reference, read_pack, split_reference, write_pack
from medvlm.data.manifest import load_images, save_png, write_manifest
from medvlm.io import DataError


def _images(n: int = 5, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size), dtype=np.uint8)


def test_a_pack_round_trips_and_loads_beside_png_files(tmp_path):
    images = _images()
    write_pack(tmp_path / "raw" / "images" / "cls_id.safetensors", images)
    save_png(images[0], tmp_path / "raw" / "extra.png")
    assert np.array_equal(read_pack(tmp_path / "raw" / "images" / "cls_id.safetensors"), images)
    entries = [pack_reference("raw/images/cls_id.safetensors", i) for i in (3, 1)] + ["raw/extra.png"]
    loaded = load_images(tmp_path, entries).numpy()
    assert np.array_equal(loaded, images[[3, 1, 0]])


def test_references_are_split_only_for_packs():
    assert split_reference("raw/images/vqa.safetensors#12") == ("raw/images/vqa.safetensors", 12)
    assert split_reference("raw/images/odd#name.png") == ("raw/images/odd#name.png", None)
    with pytest.raises(DataError, match="whole number"):
        split_reference("raw/images/vqa.safetensors#x")


def test_bad_packs_and_indices_name_the_file(tmp_path):
    write_pack(tmp_path / "p.safetensors", _images(2))
    with pytest.raises(DataError, match=r"p.safetensors: image 2 asked for, but the pack holds 2"):
        load_images(tmp_path, ["p.safetensors#2"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a pack")
    with pytest.raises(DataError, match="bad.safetensors: not a readable image pack"):
        load_images(tmp_path, ["bad.safetensors#0"])
    with pytest.raises(DataError, match="missing.safetensors: image pack not found"):
        load_images(tmp_path, ["missing.safetensors#0"])
    with pytest.raises(DataError, match="outside the data folder"):
        load_images(tmp_path, ["../elsewhere.safetensors#0"])
    with pytest.raises(ValueError, match="uint8"):
        write_pack(tmp_path / "f.safetensors", _images(2).astype(np.float32))


def test_a_rewritten_pack_is_read_again(tmp_path):
    path = tmp_path / "p.safetensors"
    write_pack(path, _images(2))
    first = read_pack(path)
    write_pack(path, _images(3))
    assert len(read_pack(path)) == 3 and len(first) == 2


def test_export_writes_each_image_once_as_png(tmp_path):
    images = _images(3)
    write_pack(tmp_path / "raw" / "images" / "vqa.safetensors", images)
    write_manifest(pd.DataFrame({"id": ["q0", "q1", "q2", "q3"],
                                 "image": [pack_reference("raw/images/vqa.safetensors", i) for i in (0, 0, 1, 2)],
                                 "question": "?", "answer": "yes", "answer_type": "closed",
                                 "split": ["train", "train", "train", "test"]}), tmp_path / "raw", "vqa")
    out = tmp_path / "exported"
    assert export_images(data=tmp_path / "raw", kind="vqa", out=out, split="train") == 2
    assert sorted(p.name for p in out.iterdir()) == ["q0.png", "q2.png"]
    assert np.array_equal(load_images(tmp_path, ["exported/q2.png"]).numpy()[0], images[1])
    runner = CliRunner()
    app = typer.Typer()
    app.command()(main)
    bad = runner.invoke(app, ["--data", str(tmp_path / "raw"), "--kind", "vqa", "--out", str(out), "--perturbed"])
    assert bad.exit_code == 2 and "no 'perturbed' column" in bad.output
