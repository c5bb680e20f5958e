"""Image files to uint8 RGB arrays as PIL (torchvision) and Caffe see them: EXIF orientation
ignored, and a file that cannot be decoded completely (a truncated JPEG included), an empty
file and an image of more than MAX_PIXELS pixels (checked in its header, before decoding)
unreadable.

OpenCV rotates a JPEG by its EXIF orientation tag unless told not to, while PIL and Caffe
use the stored pixels; and it fills the missing part of a truncated JPEG with grey, warning
on stderr only. Both would silently change what the network sees.

OpenCV's decoders also log their own complaints about a damaged file on stderr ("[ERROR:0@31.9]
global grfmt_png.cpp ..."), beside the toolkit's one line naming the unreadable files; its
log level is set to silent when this module is imported, which happens in every process that
decodes (data-loader workers import it, or inherit the setting by fork). A user's own
OPENCV_LOG_LEVEL (debugging OpenCV) is left alone.
"""

from __future__ import annotations

import io
import os
import warnings

import cv2
import numpy as np
from PIL import Image

if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DECODE_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# Larger images are unreadable: 2^27 pixels (11585 x 11585, 384 MiB decoded) is more than
# any camera's, and a 1 MB PNG can declare 30000 x 30000, which decodes to 2.7 GB and more
# in each copy that follows.
MAX_PIXELS = 2**27

JPEG_START, START_OF_SCAN, END_OF_IMAGE = b"\xff\xd8", 0xDA, b"\xff\xd9"
# Markers without a length field: TEM, RST0-7 (SOI and EOI never occur inside the headers).
STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8)}


def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG `data` reaches its end-of-image marker after its first scan. The header
    segments before the scan are skipped by their lengths (an EXIF thumbnail there has an
    end-of-image marker of its own); in the compressed data that follows, a 0xFF byte is
    always escaped, so 0xFF 0xD9 there is the end of the image, wherever it is (data some
    cameras append after it does not hide it)."""
    position = len(JPEG_START)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False  # the headers are broken: not something we can decode fully
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        elif marker == START_OF_SCAN:
            return data.find(END_OF_IMAGE, position) != -1
        elif marker in STANDALONE_MARKERS:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2:position + 4], "big")
    return False


def pixel_count(data: bytes) -> int | None:
    """The width x height an image file's header declares, read without decoding it (by
    PIL, which reads headers lazily); None when PIL does not know the format."""
    try:
        with warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning), \
                Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # twice PIL's own limit, so above ours too
        return MAX_PIXELS + 1
    except Exception:  # unidentified or damaged: OpenCV decides below
        return None
    return width * height


def decode_image(path: str) -> np.ndarray | None:
    """The image file at `path` as a uint8 (H, W, 3) RGB array, its stored pixels unrotated,
    or None if it is missing, empty, not an image, truncated, or of more than MAX_PIXELS."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return decode_bytes(data)


def decode_bytes(data: np.ndarray) -> np.ndarray | None:
    """An image file's bytes (a uint8 array) decoded as ``decode_image`` decodes the file:
    the same pixels, or None where it would give None."""
    if data.size == 0:  # OpenCV 5 raises on an empty buffer
        return None
    if data[:2].tobytes() == JPEG_START and not jpeg_is_complete(data.tobytes()):
        return None
    pixels = pixel_count(data.tobytes())
    if pixels is not None and pixels > MAX_PIXELS:
        return None
    try:
        return cv2.imdecode(data, DECODE_FLAGS)
    except cv2.error:  # above OpenCV's own pixel limit, or a header it rejects
        return None
