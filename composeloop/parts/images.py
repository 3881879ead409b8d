"""Sample grids as PNG files, written with numpy and zlib only (no imaging dependency).

This module owns turning a batch of grayscale images into one tiled, upscaled 8-bit image
and writing it as a PNG (via a temporary file and a rename, so a crash never leaves half a
file). It knows nothing of models or training.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from composeloop.files import write_atomically


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale (h, w) or RGB (h, w, 3) uint8 array encoded as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"png_bytes needs a uint8 (h, w) or (h, w, 3) array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    color_type = 0 if image.ndim == 2 else 2
    rows = image.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def tile(
    images: np.ndarray, columns: int = 8, *, low: float = -1.0, high: float = 1.0, scale: int = 4, pad: int = 1
) -> np.ndarray:
    """Images (n, h, w) with values in [low, high] -> one uint8 grid, upscaled `scale` times.

    Cells are separated by `pad` pixels of mid grey; a short last row is left grey.

    Example:
      >>> tile(np.zeros((16, 8, 8)), columns=4).shape  # 4 cells of 8 * 4 pixels and 5 one-pixel gaps a side
      (133, 133)
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"tile needs images of shape (n, h, w), got {images.shape}")
    pixels = np.clip((images - low) / (high - low), 0.0, 1.0)
    pixels = np.round(pixels * 255).astype(np.uint8)
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    count, height, width = pixels.shape
    rows = -(-count // columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad), 128, np.uint8)
    for index in range(count):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_grid(path: str | Path, images: np.ndarray, columns: int = 8, **options: float) -> Path:
    """Writes `tile(images, columns, **options)` as a PNG at `path`; returns the path.

    Example:
      >>> generated = np.random.default_rng(0).uniform(-1, 1, size=(16, 8, 8))  # a generator's images
      >>> path = save_grid(run_dir / "samples" / "epoch_001.png", generated, columns=8)
      >>> path.name, path.read_bytes()[:4]
      ('epoch_001.png', b'\\x89PNG')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, png_bytes(tile(images, columns, **options)))
    return path
