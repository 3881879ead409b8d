"""Datasets that need no network: the embedded digits, MNIST-style .npz files, synthetic.

This module owns loading arrays, checking them (a `DataError` naming the file, key or
shapes at fault) and turning them into tf.data pipelines whose order is a pure function of
(seed, epoch), so that a run is reproducible and can resume mid-epoch.

The embedded digits (`data/digits.npz`) are the 1797 8x8 images of the UCI "Optical
Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998), as shipped
inside scikit-learn (`sklearn/datasets/data/digits.csv.gz`), converted to uint8 arrays.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import numpy as np

from composeloop.errors import DataError
from composeloop.parts.checks import check_finite, nonfinite_counts

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_LABEL_MAX = np.iinfo(np.int32).max


@attrs.frozen
class ArrayData:
    """Train and validation arrays: images or features as float32, labels as int32."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(initial=0), self.y_val.max(initial=0))) + 1


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> ArrayData:
    """A seeded random split, so validation examples come from the same writers as train."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * val_fraction))
    if n_val >= len(x):
        raise DataError(
            f"{len(x)} examples are too few to split into train and validation with val_fraction={val_fraction}"
        )
    val, train = order[:n_val], order[n_val:]
    return ArrayData(x[train], y[train], x[val], y[val])


def digits(val_fraction: float = 0.2, seed: int = 0) -> ArrayData:
    """The embedded handwritten digits: 8x8 images scaled to [0, 1], 10 classes.

    Args:
      val_fraction: fraction held out for validation.
      seed: seed of the split.

    Example:
      >>> data = digits()
      >>> data.x_train.shape  # (1438, 8, 8)
    """
    with resources.files("composeloop.parts").joinpath("data/digits.npz").open("rb") as handle:
        arrays = np.load(handle)
        images, labels = arrays["images"], arrays["labels"]
    return _split(images.astype(np.float32) / 16.0, labels.astype(np.int32), val_fraction, seed)


def _as_features(x: np.ndarray, key: str, source: str) -> np.ndarray:
    """Examples as float32 (uint8 pixels scaled to [0, 1]); checked for shape and finiteness."""
    where = f"{source} array '{key}'"
    if x.dtype.kind not in "uif":
        raise DataError(f"{where} has dtype {x.dtype}; expected numbers")
    if x.ndim == 0 or 0 in x.shape[1:]:
        raise DataError(f"{where} must hold examples along its first axis, each with values; got shape {x.shape}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range: named below
        features = x.astype(np.float32)
    if x.dtype == np.uint8:  # MNIST-style pixels
        features /= 255.0
    try:
        check_finite(features, where)
    except DataError:
        if x.dtype.kind == "f" and not any(nonfinite_counts(x)):  # finite, but not in float32
            raise DataError(f"{where} holds values beyond float32's range (up to {np.abs(x).max():.3g})") from None
        raise
    return features


def _as_labels(y: np.ndarray, key: str, source: str) -> np.ndarray:
    where = f"{source} array '{key}'"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} must be integer class ids of shape (n,), got {y.shape}")
    if y.dtype.kind == "f" and np.isfinite(y).all() and np.all(np.mod(y, 1) == 0):
        largest = float(np.abs(y).max(initial=0))  # a Python float: no cast of the bound to float16
        if largest > _LABEL_MAX:
            raise DataError(f"{where} holds a label beyond {_LABEL_MAX} ({largest:.3g})")
        y = y.astype(np.int64)
    if y.dtype.kind not in "ui":
        raise DataError(f"{where} must hold integer class ids, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{where} holds a negative label ({int(y.min())})")
    if y.size and y.max() > _LABEL_MAX:
        raise DataError(f"{where} holds a label beyond {_LABEL_MAX} ({int(y.max())}); labels are int32 class ids")
    return y.astype(np.int32)


# Reading a damaged file fails in zipfile, zlib or numpy's header parser with whatever they
# raise (BadZipFile, zlib.error, NotImplementedError for an unknown compression method,
# RuntimeError for an encrypted member, tokenize.TokenError for a mangled .npy header,
# MemoryError for a header claiming a huge shape, ...): on those untrusted bytes any
# exception means "unreadable", so the two readers below catch them all.


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of `NPZ_KEYS` from the .npz at `path`; a DataError names what cannot be read."""
    try:
        # Opened here, not by np.load: numpy leaks its own handle when the zip is damaged.
        with open(path, "rb") as handle:
            return _read_archive(handle, path)
    except DataError:
        raise
    except Exception as error:  # unreadable, whatever the parser raised (see above)
        # numpy's own text for a file that is no zip talks about pickles: the error type says enough.
        raise DataError(f"data.path: {path} is not a readable .npz file ({type(error).__name__})") from None


def _read_archive(handle: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    archive = np.load(handle, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a lone .npy array
        raise DataError(f"data.path: {path} holds one array, not an .npz with {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DataError(
                f"data.path: {path} lacks {', '.join(missing)}; an MNIST-style .npz holds {', '.join(NPZ_KEYS)}"
            )
        return {key: _read_array(archive, key, path) for key in NPZ_KEYS}


def _read_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"data.path: {path} array '{key}' holds Python objects; store numbers") from None
        reason = type(error).__name__
    except Exception as error:  # unreadable, whatever the parser raised (see above)
        reason = type(error).__name__
    raise DataError(f"data.path: {path} is not a readable .npz file (array '{key}': {reason})")


def load_npz(path: str | Path) -> ArrayData:
    """Reads an MNIST-style .npz holding x_train, y_train, x_test, y_test.

    The test split is used for validation. uint8 images are scaled to [0, 1]. Features
    holding NaN or Inf are refused. Different train and validation classes are not an
    error; `checks.class_set_difference` gives the note to show.

    Raises:
      DataError: the file is missing or unreadable, lacks a key, holds non-finite features,
        or its shapes or labels are wrong (one line naming the file and array).

    Example:
      >>> data = load_npz("mnist.npz")
      >>> data.example_shape  # (28, 28)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: no such file: {path}" if not path.exists() else f"data.path: {path} is not a file")
    return checked_arrays(_read_arrays(path), f"data.path: {path}")


def checked_arrays(raw: Mapping[str, np.ndarray], source: str) -> ArrayData:
    """Train and validation arrays checked and converted: features float32, labels int32.

    Args:
      raw: ``x_train``, ``y_train`` and the validation pair, as ``x_val, y_val`` or ``x_test, y_test``.
      source: how messages name where the arrays came from (``data.path: mnist.npz``).

    Raises:
      DataError: a dtype, shape or count at fault, naming `source` and the array.
    """
    val = "x_val" if "x_val" in raw else "x_test"
    y_val = "y" + val[1:]
    x_train, x_val = _as_features(raw["x_train"], "x_train", source), _as_features(raw[val], val, source)
    y_train, y_valid = _as_labels(raw["y_train"], "y_train", source), _as_labels(raw[y_val], y_val, source)
    for x_key, x, y_key, y in (("x_train", x_train, "y_train", y_train), (val, x_val, y_val, y_valid)):
        if len(x) != len(y):
            raise DataError(f"{source} has {len(x)} examples in {x_key} but {len(y)} labels in {y_key}")
        if len(x) == 0:
            raise DataError(f"{source} array '{x_key}' is empty")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise DataError(
            f"{source} x_train examples have shape {x_train.shape[1:]} but {val} examples {x_val.shape[1:]}"
        )
    return ArrayData(x_train, y_train, x_val, y_valid)


def read_features(path: str | Path, key: str) -> np.ndarray:
    """The features to predict on: array ``x`` (or ``x_test``) of an .npz, as float32.

    Raises:
      DataError: naming `key` and the file when it is missing, unreadable or holds no features.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{key}: no such file: {path}")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:
            name = next((name for name in ("x", "x_test") if name in arrays.files), None)
            if name is None:
                raise DataError(f"{key}: {path} holds no array 'x' (it has {', '.join(arrays.files) or 'nothing'})")
            x = arrays[name]
    except DataError:
        raise
    except Exception as error:  # unreadable, whatever the parser raised (see `_read_arrays`)
        raise DataError(f"{key}: {path} is not a readable .npz file ({type(error).__name__})") from None
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{key}: {path} array '{name}' must hold examples of shape (n, ...), got {x.shape}")
    return _as_features(x, name, f"{key}: {path}")


def synthetic(
    examples: int = 256, shape: tuple[int, ...] = (8, 8), classes: int = 10, val_fraction: float = 0.25, seed: int = 0
) -> ArrayData:
    """A learnable synthetic classification set: one random prototype per class plus noise.

    Example:
      >>> data = synthetic(examples=64, shape=(4, 4), classes=3)
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(classes, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, size=examples).astype(np.int32)
    x = prototypes[labels] + 0.5 * rng.normal(size=(examples, *shape)).astype(np.float32)
    return _split(x, labels, val_fraction, seed)


def check_labels(data: ArrayData | Datasets, num_classes: int) -> None:
    """Raises a `DataError` when any label falls outside ``[0, num_classes)``, when there
    are no classes to build a classifier for (streamed data declaring none, unconfigured),
    or when streamed data declare more classes than that."""
    if num_classes < 1:
        raise DataError(
            f"model.num_classes: the data declare no classes (num_classes={num_classes}); "
            "set model.num_classes=N (or Datasets.num_classes)"
        )
    if isinstance(data, Datasets):
        if data.num_classes > num_classes:
            raise DataError(
                f"labels outside the model's classes: the data hold {data.num_classes} classes "
                f"but model.num_classes={num_classes}"
            )
        return  # streamed labels are not in memory to check
    for split, labels in (("train", data.y_train), ("validation", data.y_val)):
        if labels.size and labels.max() >= num_classes:
            raise DataError(
                f"labels outside the model's classes: {split} labels go up to {int(labels.max())} "
                f"but model.num_classes={num_classes}"
            )


def epoch_order(examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order examples are read in one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(examples)


# Arrays already converted to tensors, by id, each entry dropped when its array is freed.
_TENSORS: dict[int, Any] = {}


def _as_tensor(array: Any) -> Any:
    """`array` as a tensor, converted once while the array lives.

    An epoch's pipeline used to convert the whole array anew: a large copy per epoch, and
    a gather from a freshly made tensor inside `Dataset.map` runs several times slower
    than from one made before (measured: 0.79 s vs 0.15 s to read an MNIST-sized epoch).
    """
    import tensorflow as tf

    if not isinstance(array, np.ndarray):
        return tf.convert_to_tensor(array)
    key = id(array)
    if key not in _TENSORS:
        _TENSORS[key] = tf.convert_to_tensor(array)
        weakref.finalize(array, _TENSORS.pop, key, None)
    return _TENSORS[key]


# Up to this size an epoch's shuffled copy is made at once; larger arrays are gathered
# batch by batch, so that an epoch never holds a second copy of a large training set.
WHOLE_EPOCH_BYTES = 64 * 2**20


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True):
    """One epoch of ``{"x", "y"}`` batches, shuffled by (seed, epoch), prefetched.

    The last batch may be smaller. The order is `epoch_order(len(x), seed, epoch)`, so a
    resume can skip into it. An unshuffled pass slices the arrays in place; a shuffled one
    reorders them at once when they are small (at most `WHOLE_EPOCH_BYTES`: a pipeline
    with no function to trace, about 2 ms to build instead of 20), else gathers each batch
    by index. The arrays are converted to tensors on the first call and reused while they
    live: change them in place between calls and later epochs still read the old values
    (pass new arrays instead).

    Example:
      >>> dataset = batches(data.x_train, data.y_train, 32, seed=0, epoch=3)
    """
    import tensorflow as tf

    features, labels = _as_tensor(x), _as_tensor(y)
    if not shuffle:
        dataset = tf.data.Dataset.from_tensor_slices({"x": features, "y": labels}).batch(batch_size)
    elif x.nbytes + y.nbytes <= WHOLE_EPOCH_BYTES:
        order = tf.constant(epoch_order(len(x), seed, epoch))
        reordered = {"x": tf.gather(features, order), "y": tf.gather(labels, order)}
        dataset = tf.data.Dataset.from_tensor_slices(reordered).batch(batch_size)
    else:
        order = tf.data.Dataset.from_tensor_slices(epoch_order(len(x), seed, epoch)).batch(batch_size)
        dataset = order.map(lambda index: {"x": tf.gather(features, index), "y": tf.gather(labels, index)})
    return dataset.prefetch(tf.data.AUTOTUNE)


@attrs.frozen
class Datasets:
    """Data you stream yourself: the batches of each epoch and of validation.

    Attributes:
      train: epoch number (0-based) -> that epoch's batches of ``{"x", "y"}`` (or whatever
        your step reads), in an order that is a pure function of the epoch (and your
        seed): a resume skips the batches already trained on.
      validation: () -> validation batches, or None for no validation.
      example_shape: the shape of one example (what a model is built for).
      num_classes: how many classes the labels hold, if the data are labelled.
      examples: training examples per epoch, if known (a learning-rate schedule decays
        over the updates they make).
      description: one line on how the data are read (e.g. files shared out over
        workers), shown once when a run starts; empty: nothing to say.
    """

    train: Callable[[int], Any]
    validation: Callable[[], Any] | None = None
    example_shape: tuple[int, ...] = attrs.field(default=(), converter=tuple)
    num_classes: int = 0
    examples: int | None = None
    description: str = ""


def as_data(value: Any, source: str) -> ArrayData | Datasets:
    """Your data function's result as composeloop's data.

    Accepts `ArrayData`, `Datasets`, a mapping or object with ``x_train, y_train, x_val,
    y_val`` (``x_test, y_test`` also serve for validation), or Keras's
    ``((x_train, y_train), (x_val, y_val))``. Arrays are checked as `load_npz` checks a file's.

    Raises:
      DataError: naming `source` and what is missing or wrong.
    """
    if isinstance(value, ArrayData | Datasets):
        return value
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, tuple | list) for v in value):
        (x_train, y_train), (x_val, y_val) = value
        arrays = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    else:
        get = value.get if isinstance(value, Mapping) else lambda key: getattr(value, key, None)
        arrays = {key: get(key) for key in ("x_train", "y_train", "x_val", "y_val")}
        arrays["x_val"] = arrays["x_val"] if arrays["x_val"] is not None else get("x_test")
        arrays["y_val"] = arrays["y_val"] if arrays["y_val"] is not None else get("y_test")
    missing = [key for key, array in arrays.items() if array is None]
    if missing:
        raise DataError(
            f"{source} gave {type(value).__name__} without {', '.join(missing)}; return ArrayData, Datasets, "
            "a mapping of x_train, y_train, x_val, y_val arrays, or ((x_train, y_train), (x_val, y_val))"
        )
    return checked_arrays({key: np.asarray(array) for key, array in arrays.items()}, source)
