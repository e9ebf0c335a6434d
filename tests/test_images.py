"""Decoding real images: 8/16-bit PNG, JPEG, DICOM (windowing, MONOCHROME1), resize modes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medvlm.data.images import ImageJob, prepare_images, read_grayscale, resize_square
from medvlm.io import DataError


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", window: tuple | None = None,
                slope: float = 1.0, intercept: float = 0.0) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_png_8_and_16_bit_and_jpeg(tmp_path):
    ramp16 = np.tile(np.linspace(1000, 4000, 8).astype(np.uint16), (6, 1))  # 12-bit data in a 16-bit PNG
    Image.fromarray(ramp16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = read_grayscale(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and deep.min() == 0 and deep.max() == 255 and (np.diff(deep[0].astype(int)) > 0).all()

    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert (read_grayscale(tmp_path / "gray.png") == gray).all()  # 8-bit: kept as it is

    colour = np.zeros((6, 8, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.jpg", quality=95)
    luminance = read_grayscale(tmp_path / "colour.jpg")
    assert luminance.shape == (6, 8) and abs(int(luminance.mean()) - 60) <= 3  # 0.299 * 200


def test_dicom_windowing_and_monochrome1(tmp_path):
    pixels = np.tile(np.arange(0, 4000, 500, dtype=np.uint16), (4, 1))  # 0 .. 3500
    plain = read_grayscale(write_dicom(tmp_path / "plain.dcm", pixels))
    assert plain[0, 0] == 0 and plain[0, -1] == 255
    # A window of 1000 +- 500 saturates everything at or above 1500 and clips everything at or below 500.
    windowed = read_grayscale(write_dicom(tmp_path / "window.dcm", pixels, window=(1000, 1000)))
    assert windowed[0, 0] == windowed[0, 1] == 0 and (windowed[0, 3:] == 255).all() and 0 < windowed[0, 2] < 255
    # MONOCHROME1: low values are bright; stored the other way round, so bone is white like every other image.
    inverted = read_grayscale(write_dicom(tmp_path / "mono1", pixels, photometric="MONOCHROME1"))
    assert (inverted == 255 - plain).all()


def test_resize_modes():
    wide = np.full((10, 20), 200, dtype=np.uint8)
    assert resize_square(wide, 8, "squash").shape == (8, 8)
    assert (resize_square(wide, 8, "crop") == 200).all()
    padded = resize_square(wide, 8, "pad")
    assert (padded[0] == 0).all() and (padded[4] == 200).all()  # black bars above and below


def test_bad_images_name_the_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, fragment in (("cut.jpg", "truncated"), ("text.png", "unreadable"), ("empty.png", "empty"),
                           ("gone.png", "not found")):
        with pytest.raises(DataError, match=fragment) as excinfo:
            read_grayscale(tmp_path / name)
        assert name in str(excinfo.value)


def test_a_failing_worker_reports_its_file(tmp_path):
    jobs = [ImageJob(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png") for i in range(6)]
    for job in jobs[:5]:
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(job.source)
    jobs[5].source.write_text("broken")
    with pytest.raises(DataError, match="5.png"):
        prepare_images(jobs, size=8, mode="crop", workers=2, what="test")


def test_jpeg_decodes_at_reduced_scale_with_nearly_the_same_result(tmp_path):
    ramp = np.add.outer(np.arange(256), np.arange(256)) // 2
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    reduced = read_grayscale(tmp_path / "big.jpg", min_side=32)
    assert reduced.shape == (32, 32)  # 1/8 scale straight from the decoder
    full = read_grayscale(tmp_path / "big.jpg")
    assert full.shape == (256, 256)
    difference = resize_square(reduced, 32, "crop").astype(int) - resize_square(full, 32, "crop").astype(int)
    assert np.abs(difference).mean() < 2
