"""Decoding image files (vgg/data/decoding.py) as PIL, torchvision and Caffe do: the stored
pixels, never rotated by an EXIF tag, and a truncated JPEG counted as unreadable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from dataset_class import UnreadableImageError, build_dataset
from tests.fakedata import write_image_folder
from vgg.data.decoding import MAX_PIXELS, decode_image

RNG = np.random.default_rng(0)


def photo(height: int = 60, width: int = 80) -> np.ndarray:
    """Smooth random RGB content that JPEG keeps recognisable, and no symmetry."""
    return cv2.GaussianBlur(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)


def write_jpeg(path, image: np.ndarray, orientation: int | None = None) -> None:
    """A JPEG written by PIL, with an EXIF Orientation tag if given (6: the camera was held
    rotated, display it turned 90 degrees clockwise)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(image).save(path, quality=92, exif=exif)


def test_exif_orientation_is_ignored_as_pil_and_torchvision_do(tmp_path):
    path = tmp_path / "rotated.jpg"
    write_jpeg(path, photo(), orientation=6)
    with Image.open(path) as stored:
        assert stored.getexif()[0x0112] == 6
        pil = np.asarray(stored.convert("RGB"))  # torchvision's loader: no exif_transpose
    decoded = decode_image(str(path))
    assert decoded.shape == pil.shape == (60, 80, 3)  # not turned into 80 x 60
    np.testing.assert_array_equal(decoded, pil)


def test_datasets_deliver_the_unrotated_pixels(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=1, splits=("train", "test"))
    image = photo()
    write_jpeg(tmp_path / "test" / "a" / "rotated.jpg", image, orientation=6)
    dataset = build_dataset("ImageFolder", "test", tmp_path, np.asarray)
    assert dataset.files[1] == str(tmp_path / "test" / "a" / "rotated.jpg")
    got = dataset[1][0]
    assert got.shape == (60, 80, 3)
    assert np.abs(got.astype(int) - image).mean() < 3  # JPEG's loss only


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_a_truncated_jpeg_is_unreadable_not_grey_filled(tmp_path, keep):
    path = tmp_path / "whole.jpg"
    write_jpeg(path, photo(120, 160))
    assert decode_image(str(path)) is not None
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:int(len(data) * keep)])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone fills the rest with grey
    assert decode_image(str(cut)) is None


def test_complete_jpegs_with_thumbnails_or_trailing_bytes_still_decode(tmp_path):
    image = photo()
    path = tmp_path / "thumb.jpg"
    thumbnail = Image.fromarray(image[::4, ::4])
    Image.fromarray(image).save(path, quality=92)
    baseline = decode_image(str(path))
    # An APP1 segment holding a whole JPEG (with its own end-of-image marker) before the
    # image, as a camera's EXIF thumbnail is, and bytes after the end, as some cameras add.
    thumb_bytes = path.with_suffix(".t.jpg")
    thumbnail.save(thumb_bytes, quality=80)
    app1 = b"Exif\x00\x00" + thumb_bytes.read_bytes()
    data = path.read_bytes()
    segment = b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
    path.write_bytes(data[:2] + segment + data[2:] + b"\x00" * 64 + b"trailer")
    np.testing.assert_array_equal(decode_image(str(path)), baseline)
    progressive = tmp_path / "progressive.jpg"
    Image.fromarray(image).save(progressive, quality=92, progressive=True)
    assert decode_image(str(progressive)).shape == (60, 80, 3)
    cut = tmp_path / "progressive_cut.jpg"
    cut.write_bytes(progressive.read_bytes()[:-200])
    assert decode_image(str(cut)) is None


def test_a_truncated_jpeg_counts_as_corrupt_in_a_dataset(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "test"),
                       extension=".jpg")
    cut = tmp_path / "test" / "b" / "1.jpg"
    cut.write_bytes(cut.read_bytes()[:-40])
    with pytest.raises(UnreadableImageError, match="1.jpg"):
        build_dataset("ImageFolder", "test", tmp_path, np.asarray, on_corrupt="error")[3]
    dataset = build_dataset("ImageFolder", "test", tmp_path, np.asarray)
    [dataset[i] for i in range(len(dataset))]
    assert dataset.unreadable_files() == [str(cut)]


def huge_png(path, height: int, width: int) -> None:
    """A real PNG of a huge blank image: a few hundred KB on disk, gigabytes decoded."""
    cv2.imwrite(str(path), np.zeros((height, width), np.uint8))


@pytest.mark.parametrize("kind", ["empty", "above-our-limit", "above-opencvs-limit"])
def test_empty_and_huge_images_are_unreadable_not_a_crash(tmp_path, kind):
    """Issue 24: OpenCV 5 raises on an empty buffer and on images above its pixel limit
    (2^30); a 30000 x 30000 PNG of 0.9 MB decodes to 900 MB and got train.py OOM-killed.
    Both are unreadable files, counted and listed like other bad files."""
    path = tmp_path / "bad.png"
    if kind == "empty":
        path.touch()
    elif kind == "above-our-limit":  # 900 M pixels: under OpenCV's 2^30, over MAX_PIXELS
        huge_png(path, 30000, 30000)
    else:
        huge_png(path, 30000, 40000)
    assert path.stat().st_size < 2**21
    assert decode_image(str(path)) is None
    assert decode_image(str(path)) is None  # (and again: nothing cached or half-done)


def test_an_image_at_the_pixel_limit_still_decodes(tmp_path):
    path = tmp_path / "big.png"
    huge_png(path, 2**14, MAX_PIXELS // 2**14)  # 16384 x 8192
    assert decode_image(str(path)).shape == (2**14, MAX_PIXELS // 2**14, 3)


def test_empty_and_huge_files_count_as_corrupt_in_a_dataset(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], per_class=2, splits=("train", "test"),
                       extension=".png")
    empty, huge = tmp_path / "test" / "a" / "0.png", tmp_path / "test" / "b" / "1.png"
    empty.write_bytes(b"")
    huge_png(huge, 30000, 30000)
    dataset = build_dataset("ImageFolder", "test", tmp_path, np.asarray)
    [dataset[i] for i in range(len(dataset))]
    assert sorted(dataset.unreadable_files()) == sorted([str(empty), str(huge)])


@pytest.mark.parametrize("workers", [0, 2])
def test_opencv_s_own_messages_do_not_leak_beside_the_toolkit_s(tmp_path, workers):
    """Issue 22 item 9: a PNG whose header chunk is damaged makes OpenCV's decoder log
    "[ERROR:0@...] global grfmt_png.cpp ..." on stderr, in whichever process decodes it
    (here predict.py's loader workers too); only the toolkit's one line may remain."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.evalnets import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "net.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 36), 60 * i, np.uint8)).save(photos / f"{i}.png")
    good = (photos / "0.png").read_bytes()
    # The signature, then a chunk that is not IHDR: libpng's "IHDR chunk shall be first".
    (photos / "corrupt.png").write_bytes(good[:8] + b"\x00\x00\x00\x04tEXt" + good[16:])
    done = subprocess.run(
        [sys.executable, "predict.py", str(photos), "--checkpoint", str(tmp_path / "net.pt"),
         "--workers", str(workers), "--progress", "false"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"})
    assert done.returncode == 0, done.stderr
    assert f"could not read 1 file(s): {photos / 'corrupt.png'}" in done.stderr
    assert "[ERROR" not in done.stderr and "grfmt" not in done.stderr, done.stderr
    assert len(done.stdout.splitlines()) == 3  # the readable images were all predicted
