"""Safe image decoding: one function used by training, evaluation, prediction and serving.

Every Pillow mode becomes a correct RGB (or single-channel) image; EXIF orientation is applied;
decompression bombs, formats we do not decode (EPS, PDF, SVG ...) and corrupt, truncated or
empty files are refused with an ``ImageDecodeError`` that names the file and the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..core.errors import ConfigError, ImageDecodeError

# Pillow's formats we accept. EPS/PDF/SVG/PSD and other formats that run external programs or
# carry scripts are never opened.
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)
JUNK_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db"})
JUNK_DIRS = frozenset({"__macosx", "@eadir", "$recycle.bin", "__pycache__"})
# Pillow's own default (about 89 Mpixel, a 256 MB RGB image); bigger is treated as a bomb.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Transparent pixels are composited on this fixed colour, so an image never depends on what
# happened to be stored under alpha = 0.
BACKGROUND = 255

# Truncated files must fail, never decode to a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# The first bytes of each format we decode, and the extension a file of it should have.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png"),
    (b"GIF87a", "GIF", ".gif"),
    (b"GIF89a", "GIF", ".gif"),
    (b"II*\x00", "TIFF", ".tif"),
    (b"MM\x00*", "TIFF", ".tif"),
    (b"BM", "BMP", ".bmp"),
)
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
URL_REASON = "URLs are not fetched: download the image first (e.g. curl -O URL)"


def is_junk(path: str | os.PathLike, root: str | os.PathLike | None = None) -> bool:
    """Files and folders that are never samples or classes: OS metadata and hidden entries."""
    p = Path(path)
    parts = p.relative_to(root).parts if root is not None else p.parts
    for part in parts:
        low = part.lower()
        if low in JUNK_FILES or low in JUNK_DIRS or part.startswith("."):
            return True
    return False


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sniff_format(path: str | os.PathLike) -> tuple[str, str] | None:
    """(format, usual extension) when the file's first bytes are those of an image format we
    decode, whatever its name says; None otherwise (or when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", ".webp"
    for magic, fmt, ext in _SIGNATURES:
        if head.startswith(magic):
            return fmt, ext
    return None


def skip_reason(path: str | os.PathLike) -> str:
    """Why a file in a folder of images is not used: its name is not an image's. A file that is
    an image all the same (a JPEG saved without an extension) is said to be one."""
    found = sniff_format(path)
    if found is None:
        return "not an image file by its extension"
    fmt, ext = found
    name = Path(path).name
    return f"a {fmt} image without an image extension: rename it {name}{ext} to use it"


def unreadable_reason(path: str | os.PathLike, exc: OSError) -> str:
    """What is wrong with a path that cannot be opened, in words: a URL, a broken link, ..."""
    text = os.fspath(path)
    if URL.match(text) and not os.path.lexists(text):
        return URL_REASON
    if os.path.islink(text) and not os.path.exists(text):
        return f"broken symbolic link (its target {os.readlink(text)} does not exist)"
    return f"cannot read: {exc.strerror or exc}"


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite an image with alpha onto the fixed background; keeps L or RGB."""
    if img.mode in ("LA", "La"):
        base = Image.new("L", img.size, BACKGROUND)
        base.paste(img.convert("L"), mask=img.getchannel("A"))
        return base
    rgba = img.convert("RGBA")
    base = Image.new("RGB", img.size, (BACKGROUND,) * 3)
    base.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return base


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale to 8-bit L, scaled rather than clipped."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        a = a.astype(np.float64) / 257.0  # 65535 -> 255
    elif img.mode == "F" and a.size and np.nanmin(a) >= 0.0 and np.nanmax(a) <= 1.0:
        a = a.astype(np.float64) * 255.0
    else:
        a = a.astype(np.float64)
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 0.0)
        if img.mode == "I" and lo >= 0 and hi <= 255:
            pass
        elif img.mode == "I" and lo >= 0 and hi <= 65535:
            a = a / 257.0  # 16-bit PNGs often open as mode I
        elif hi > lo:
            a = (a - lo) * (255.0 / (hi - lo))
        else:
            a = np.zeros_like(a)
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def to_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any Pillow mode to ``RGB`` (channels=3) or ``L`` (channels=1)."""
    mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        img = _flatten_alpha(img)
    elif mode.startswith("I") or mode == "F":
        img = _high_depth_to_l(img)
    elif mode not in ("L", "RGB"):
        img = img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


@contextlib.contextmanager
def _opened(source, path, max_pixels: int):
    """``Image.open`` of ``source`` within the pixel limit, every failure (inside the ``with``
    too) as the ``ImageDecodeError`` that names ``path`` and the reason: ``open_image`` and
    ``probe_image`` refuse a file in the same words."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=DECODE_FORMATS) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        path,
                        f"{w}x{h} pixels exceeds the limit of {max_pixels:,} (possible "
                        "decompression bomb)",
                        kind="too_large",
                    )
                yield img
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            path, f"refused as a decompression bomb: {exc}", kind="too_large"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            path,
            f"not an image in a supported format ({', '.join(DECODE_FORMATS)})",
            kind="unsupported",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = f"truncated file ({reason})"
        raise ImageDecodeError(path, f"corrupt image: {reason}") from None


def open_image(
    source: str | os.PathLike | bytes | io.IOBase,
    channels: int = 3,
    max_pixels: int = MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path, bytes or binary file) to an RGB or L image, safely.

    ``min_side``: the image will only be used at this size or smaller, so a JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale (in the DCT, several times faster) as long as both sides
    stay at least ``min_side``."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = source
        try:
            if os.path.getsize(source) == 0:
                raise ImageDecodeError(path, "empty file (0 bytes)")
        except OSError as exc:
            raise ImageDecodeError(path, unreadable_reason(path, exc)) from None
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageDecodeError(None, "empty upload (0 bytes)")
        source = io.BytesIO(source)
    with _opened(source, path, max_pixels) as img:
        if min_side and img.format == "JPEG":
            img.draft("RGB" if channels == 3 else "L", (min_side, min_side))
        img.load()
        # In place: a photo without an orientation tag is not copied (a copy costs a quarter
        # of the decode of a small JPEG).
        ImageOps.exif_transpose(img, in_place=True)
        return to_mode(img, channels)


# EXIF orientations that turn the image a quarter: its height and width swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def probe_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(h, w) of the image ``open_image`` would give (EXIF orientation applied), from the
    file's header alone: refuses with the same ``ImageDecodeError`` what can be told without
    decoding (an empty or unreadable file, a format we do not decode, a decompression bomb).
    A corrupt or truncated body is found only when the pixels are decoded."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageDecodeError(path, "empty file (0 bytes)")
    except OSError as exc:
        raise ImageDecodeError(path, unreadable_reason(path, exc)) from None
    with _opened(path, path, max_pixels) as img:
        w, h = img.size
        turned = img.getexif().get(0x0112) in _QUARTER_TURNS
        return (w, h) if turned else (h, w)


def from_pil(img: Image.Image, channels: int = 3) -> Image.Image:
    """A PIL image a caller holds, made what ``open_image`` makes of a file: its EXIF
    orientation applied (on a copy; the caller's image is left as it is) and its mode made
    RGB or L (alpha composited on the fixed background), so that an image handed over in
    memory is the same pixels as that image read from disk."""
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    return to_mode(ImageOps.exif_transpose(img), channels)


def image_to_uint8(img: Image.Image):
    """PIL image (RGB or L) to a (C, H, W) uint8 torch tensor."""
    import torch

    a = np.array(img, dtype=np.uint8)  # a writable copy
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
