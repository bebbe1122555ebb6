"""Decode an image file of any mode to the right 8-bit RGB pixels, with the truncation policy.

Modes (:func:`to_rgb`):

* ``1``, ``L``, ``P``, ``RGB``, ``YCbCr``, ``CMYK``, ``HSV``: PIL's conversion to RGB;
* 16-bit integer (``I;16``, ``I;16B``, ``I;16L``, e.g. a 16-bit grayscale PNG) and ``I`` (32-bit
  integer, how older Pillow opens a 16-bit PNG) with values in 0..65535: scaled to 0..255 as
  ``round(v / 257)`` (PIL's own conversion clips at 255: a 16-bit image loads all white); an ``I``
  image with values outside 0..65535 has no defined 8-bit mapping: :class:`DataError`;
* ``F`` (32-bit float): values in [0, 1] are scaled by 255, values in [0, 255] (some above 1)
  kept; NaN / infinite / other ranges: :class:`DataError`;
* with transparency (``RGBA``, ``LA``, ``PA``, ``P`` / ``L`` / ``RGB`` with a transparent colour):
  composited over white, how browsers and most viewers show it, so nothing hidden under a
  transparent pixel (often left-over or key-colour content) reaches the model;
* anything PIL cannot convert (e.g. ``LAB``): :class:`DataError` naming the mode.

Truncation (:func:`decode`): an image is decoded strictly first; one that fails is decoded again
with truncation allowed (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, set only for that call, under a
lock, then restored). How much is missing is measured on the pixels: the rows at the bottom that
hold one uniform colour (what a decoder writes where the data ran out: JPEG repeats the last block's
colour, PNG leaves zeros) -- ``missing`` is their fraction of the height (0 for e.g. a progressive
JPEG that lost only detail). The data sets refuse an image missing more than their
``max_truncated_fraction``.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from ttfnet_lightning.data.errors import DataError

__all__ = ["Decoded", "decode", "decode_image", "missing_rows", "to_rgb"]

_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class _SharedExclusiveLock:
    """Strict decodes share it; the truncation-tolerant decode (which flips PIL's global flag)
    holds it alone, so no strict decode in another thread runs while the flag is set."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_TRUNCATION_LOCK = _SharedExclusiveLock()


class ModeError(ValueError):
    """An image mode without a defined 8-bit RGB mapping (reported as is, never retried)."""


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(arr[..., None], 3, axis=2), "RGB")


def _integer_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.int64)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ModeError(
            f"{im.mode} image with values in [{lo}, {hi}]: no defined 8-bit mapping "
            "(16-bit 0..65535 is scaled; convert other ranges to 8 bits)"
        )
    return _gray_to_rgb(((arr * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257)


def _float_to_rgb(im: Image.Image) -> Image.Image:
    arr = np.asarray(im).astype(np.float64)
    if arr.size and not np.isfinite(arr).all():
        raise ModeError("float image with NaN or infinite values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ModeError(f"float image with values in [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]")
    scale = 255.0 if hi <= 1.0 else 1.0
    return _gray_to_rgb(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded PIL image of any mode -> RGB, 8 bits per channel (rules in the module docstring).

    Raises:
        ModeError: a mode / value range without a defined mapping (e.g. float values above 255).
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        return _integer_to_rgb(im)
    if mode == "F":
        return _float_to_rgb(im)
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im.convert("RGB")  # forces the full decode (truncated files fail here), a copy
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ModeError(f"image mode {mode!r} cannot be converted to RGB ({e})") from None


def missing_rows(rgb: Image.Image) -> int:
    """Number of rows at the bottom of ``rgb`` (RGB) that are one uniform colour, the colour of the
    last pixel: where a truncated file's decoder ran out of data (an upper bound for an intact image
    with a uniform bottom band, so it is only asked of images that failed to decode strictly)."""
    arr = np.asarray(rgb)
    if arr.size == 0:
        return 0
    full = (arr == arr[-1, -1]).all(axis=(1, 2))  # (H,) rows equal to the fill colour
    not_full = np.flatnonzero(~full)
    return int(len(full) - (not_full[-1] + 1)) if len(not_full) else len(full)


@dataclass(frozen=True)
class Decoded:
    """A decoded image: ``image`` RGB; ``truncated`` None when it decoded strictly, otherwise how
    much is missing and the strict decoder's error (one line); ``missing`` the fraction (0..1) of
    its rows not decoded (0 when intact)."""

    image: Image.Image
    truncated: str | None = None
    missing: float = 0.0


def _decode(src: Path | bytes, reduce_to: int | None) -> Image.Image:
    with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src) as im:
        if reduce_to is not None and im.format == "JPEG":
            # DCT-domain downscaling: reads (and so checks) the whole stream at a fraction of the cost
            im.draft("RGB", (max(1, im.width // reduce_to), max(1, im.height // reduce_to)))
        im.load()  # the full decode: truncated files fail here
        return to_rgb(im)


def decode(path: Path | bytes, *, reduce_to: int | None = None, name: str | None = None) -> Decoded:
    """Decode an image file, or an image file's bytes (the streaming format stores them as they
    are on disk), as RGB with the truncation policy (see the module docstring).

    Args:
        path: image file, or its encoded bytes (``bytes`` / ``memoryview``).
        reduce_to: None: full resolution; k: a JPEG may be decoded about k times smaller (the
            pre-flight check's cheap full-stream decode); other formats decode at full size.
        name: what error messages call the image (default: the path; for bytes, say which image).
    Raises:
        DataError: missing, unreadable, undecodable even with truncation allowed, or of a mode
            without a defined RGB mapping (names the image).
    """
    if name is None:
        name = "<image bytes>" if isinstance(path, (bytes, bytearray, memoryview)) else str(path)
    try:
        with _TRUNCATION_LOCK.shared():
            return Decoded(_decode(path, reduce_to))
    except FileNotFoundError:
        raise DataError(f"image file not found: {name}") from None
    except ModeError as e:
        raise DataError(f"cannot read image {name}: {e}") from None
    except _DECODE_ERRORS as e:  # PIL.UnidentifiedImageError is an OSError
        strict_error = f"{type(e).__name__}: {e}"
    with _TRUNCATION_LOCK.exclusive():
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            rgb = _decode(path, reduce_to)
        except ModeError as e:
            raise DataError(f"cannot read image {name}: {e}") from None
        except _DECODE_ERRORS:
            raise DataError(f"cannot read image {name}: {strict_error}") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before
    rows = missing_rows(rgb)
    missing = rows / max(1, rgb.height)
    what = (
        f"about {missing:.0%} of the image not decoded (the bottom {rows} of {rgb.height} rows are one uniform "
        "fill colour)"
        if rows
        else f"no full row of {rgb.height} missing (at most part of the last block row)"
    )
    return Decoded(rgb, f"{what} (the strict decoder: {strict_error})", missing)


def decode_image(
    path: Path | bytes, *, reduce_to: int | None = None, name: str | None = None
) -> tuple[Image.Image, str | None]:
    """:func:`decode` as ``(RGB image, None)`` when it decodes strictly, ``(image, what is missing
    and the strict decoder's error)`` when it decodes only with truncation allowed.

    Raises:
        DataError: see :func:`decode`.
    """
    d = decode(path, reduce_to=reduce_to, name=name)
    return d.image, d.truncated
