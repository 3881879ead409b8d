"""Data files that need not fit in memory: finding them, checking them, counting their records.

This module owns what a data file is: a TFRecord file of x/y records (``x`` a tensor
serialized by `tf.io.serialize_tensor`, float32 features or uint8 pixels; ``y`` an int64
class id), or an image in a folder with one subfolder per class (Keras's
`image_dataset_from_directory` conventions: classes are the subfolder names in sorted
order; .bmp, .gif, .jpeg, .jpg and .png files; an image is a file of one record). It finds
them, checks them before any training (a `DataError` naming the pattern, folder or file:
nothing matches, not a TFRecord file, not x/y records, shapes or dtypes that differ,
negative labels, no class subfolders) and counts their records. Reading them in order is
`composeloop.parts.streams`; writing them, `composeloop.parts.to_tfrecord`.
"""

from __future__ import annotations

import glob as globbing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from composeloop.errors import DataError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
COUNT_BATCH = 4096  # records per step of the counting pass


def features() -> dict[str, Any]:
    """How an x/y record is parsed with `tf.io.parse_single_example`."""
    import tensorflow as tf

    return {"x": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.int64)}


@attrs.frozen
class Files:
    """Data files in sorted order, the records each holds, and what a record is.

    `labels` are the class of each file for an image folder (one record per file), empty
    for TFRecord files (whose records carry their own).
    """

    kind: str  # "tfrecord" or "images"
    paths: tuple[str, ...]
    counts: tuple[int, ...]
    example_shape: tuple[int, ...]
    num_classes: int
    x_dtype: str = "float32"
    labels: tuple[int, ...] = ()
    image_size: tuple[int, int] = (0, 0)

    @property
    def examples(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> np.ndarray:
        """The global index of each file's first record (files in sorted order)."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _peek(path: str) -> tuple[tuple[int, ...], str]:
    """The shape and dtype of `x` in the file's first record; DataError when it has none."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
        if first is None:
            raise DataError(f"data.files: {path} holds no records")
        example = tf.io.parse_single_example(first, features())
        proto = tensor_pb2.TensorProto.FromString(example["x"].numpy())
    except tf.errors.DataLossError:
        raise DataError(f"data.files: {path} is not a TFRecord file") from None
    except tf.errors.InvalidArgumentError as error:
        raise DataError(
            f"data.files: {path} records are not x/y examples ({_first_line(error)}); "
            "write them with python -m composeloop.parts.to_tfrecord"
        ) from None
    except Exception as error:  # a malformed serialized tensor: protobuf's DecodeError
        raise DataError(f"data.files: {path} record 'x' is not a serialized tensor ({type(error).__name__})") from None
    dtype = tf.as_dtype(proto.dtype).name
    if dtype not in ("float32", "uint8"):
        raise DataError(f"data.files: {path} record 'x' has dtype {dtype}; expected float32 or uint8")
    return tuple(dim.size for dim in proto.tensor_shape.dim), dtype


def _count(path: str) -> tuple[int, int, int]:
    """Records, smallest and largest label in one file: one read, parsing only the labels."""
    import tensorflow as tf

    labels = {"y": tf.io.FixedLenFeature([], tf.int64)}
    dataset = tf.data.TFRecordDataset(path).batch(COUNT_BATCH).map(lambda r: tf.io.parse_example(r, labels)["y"])
    big = tf.constant(np.iinfo(np.int64).max, tf.int64)
    try:
        count, low, high = dataset.reduce(
            (tf.constant(0, tf.int64), big, -big),
            lambda s, y: (
                s[0] + tf.size(y, tf.int64),
                tf.minimum(s[1], tf.reduce_min(y)),
                tf.maximum(s[2], tf.reduce_max(y)),
            ),
        )
    except tf.errors.OpError as error:
        raise DataError(f"data.files: {path} cannot be read to its end ({_first_line(error)})") from None
    return int(count), int(low), int(high)


def tfrecord_files(pattern: str) -> Files:
    """The TFRecord files matching `pattern`, checked: every file readable to its end, its
    first record an x/y example of the same shape and dtype as the others', labels >= 0.

    One read of every file (parsing only the labels) counts its records: the loop needs an
    epoch's length, and the model its number of classes.

    Raises:
      DataError: naming the pattern (nothing matches) or the file at fault.

    Example:
      >>> files = tfrecord_files("shards/train-*.tfrecord")
      >>> files.examples, files.example_shape
    """
    paths = tuple(sorted(path for path in globbing.glob(pattern) if Path(path).is_file()))
    if not paths:
        raise DataError(f"data.files: no file matches {pattern!r}")
    shape, dtype = _peek(paths[0])
    counts, highest = [], 0
    for path in paths:
        other = _peek(path)
        if other != (shape, dtype):
            raise DataError(
                f"data.files: {path} holds x of shape {other[0]} {other[1]}, but {paths[0]} of shape {shape} {dtype}"
            )
        count, low, high = _count(path)
        if count and low < 0:
            raise DataError(f"data.files: {path} holds a negative label ({low})")
        counts.append(count)
        highest = max(highest, high)
    return Files("tfrecord", paths, tuple(counts), shape, highest + 1, dtype)


def image_files(directory: str | Path, image_size: Sequence[int] = (64, 64)) -> Files:
    """The images of a folder with one subfolder per class (Keras's conventions), as RGB
    images resized to `image_size` (height, width).

    Raises:
      DataError: naming the folder (missing, no class subfolders, no images in a class).

    Example:
      >>> files = image_files("flowers/", image_size=(32, 32))
      >>> files.num_classes  # one per subfolder
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data.directory: {directory} is not a directory")
    classes = sorted(entry.name for entry in directory.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"data.directory: {directory} has no class subfolders (one folder of images per class)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(
            str(path)
            for path in (directory / name).rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(f"data.directory: {directory / name} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        paths += found
        labels += [label] * len(found)
    height, width = (int(size) for size in image_size)
    return Files(
        "images",
        tuple(paths),
        (1,) * len(paths),
        (height, width, 3),
        len(classes),
        "float32",
        tuple(labels),
        (height, width),
    )
