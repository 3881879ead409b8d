"""Fuzz of `.npz` files at the loader (`data.load_npz`, `data.check_labels`): any content, any damage.

Files start from a valid MNIST-style set and are then bent: keys dropped, renamed or
added; arrays replaced by others of any dtype (object, bool, complex, strings, dates
included) and shape (0-d, empty, mismatched); NaN/Inf written in; the file truncated,
overwritten in places, or replaced by noise or a lone .npy. The loader must either return
data that training can use, or raise a one-line `DataError` naming the file, and never
warn (numpy's cast overflows, leaked file handles). Nothing here imports TensorFlow, so an
example costs milliseconds: the property runs 8 times the profile's example count (ci: 200,
thorough: 4,000).
"""

from __future__ import annotations

import io
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop.errors import DataError
from composeloop.parts import data as datasets

pytestmark = pytest.mark.property
EXAMPLES = settings.default.max_examples * 8
DTYPES = [
    np.uint8, np.int8, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64,
    np.complex64, np.bool_, np.dtype("<U3"), np.dtype("S2"), np.dtype("M8[s]"),
]  # fmt: skip
EXTREMES = [np.nan, np.inf, -np.inf, 1e300, -1e300, 2.0**40, -1.0, 0.5]


def sizes(first: int | None = None) -> st.SearchStrategy[tuple[int, ...]]:
    rest = st.lists(st.integers(0, 3), max_size=2)
    head = st.just(first) if first is not None else st.integers(0, 5)
    return st.one_of(st.just(()), st.builds(lambda n, r: (n, *r), head, rest))


@st.composite
def any_array(draw, first: int | None = None) -> np.ndarray:
    """An array of any dtype and shape; object arrays hold mixed Python values."""
    shape = draw(sizes(first))
    if draw(st.integers(0, 9)) == 0:
        values = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=2), st.floats())
        items = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    return draw(hnp.arrays(draw(st.sampled_from(DTYPES)), shape))


@st.composite
def npz_contents(draw) -> dict[str, np.ndarray]:
    """A valid set, then up to three changes: the loader's deep paths get explored too."""
    n_train, n_test = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    pixels = draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int64]))
    example = draw(st.sampled_from([(3,), (2, 2), ()]))
    classes = draw(st.integers(1, 4))
    arrays = {
        "x_train": draw(hnp.arrays(pixels, (n_train, *example), elements=st.integers(0, 255))),
        "y_train": draw(hnp.arrays(np.int64, (n_train,), elements=st.integers(0, classes - 1))),
        "x_test": draw(hnp.arrays(pixels, (n_test, *example), elements=st.integers(0, 255))),
        "y_test": draw(hnp.arrays(np.int64, (n_test,), elements=st.integers(0, classes - 1))),
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([*datasets.NPZ_KEYS, "extra"]))
        change = draw(st.sampled_from(CHANGES))
        if change == "drop":
            arrays.pop(key, None)
        else:
            arrays[key] = changed(arrays[key], change, draw) if key in arrays else draw(any_array())
    return arrays


CHANGES = ["replace", "same_length", "drop", "extreme", "column", "as_float", "labels", "shorter", "empty"]


def changed(array: np.ndarray, change: str, draw) -> np.ndarray:
    """`array` with one change; an array's length is kept unless the change is about it."""
    length = len(array) if array.ndim else None
    if change == "replace":
        return draw(any_array())
    if change == "same_length":
        return draw(any_array(first=length))
    if change == "shorter":
        return array[:-1] if length else array
    if change == "empty":
        return array[:0] if length is not None else array
    if change == "column":
        return array.reshape(length, -1) if length else array
    if change == "labels" and length is not None:
        if draw(st.booleans()):
            return draw(hnp.arrays(np.int64, length, elements=st.integers(-3, 2**40)))
        return draw(hnp.arrays(np.float64, length, elements=st.sampled_from([0.0, 1.0, 2.5, 1e20, -1.0, np.nan])))
    if array.dtype.kind not in "uifb":
        return array
    with np.errstate(over="ignore", invalid="ignore"):
        if change == "as_float":
            return array.astype(draw(st.sampled_from([np.float16, np.float32, np.float64])))
        if change == "extreme" and array.size:
            values = array.astype(np.float64)
            values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(EXTREMES))
            return values
    return array


def damaged(whole: bytes, draw) -> bytes:
    how = draw(st.sampled_from(["none"] * 7 + ["truncate", "overwrite", "noise"]))
    if how == "truncate":
        return whole[: draw(st.integers(0, max(len(whole) - 1, 0)))]
    if how == "overwrite":
        start = draw(st.integers(0, len(whole) - 1))
        patch = draw(st.binary(min_size=1, max_size=16))
        return whole[:start] + patch + whole[start + len(patch) :]
    if how == "noise":
        return draw(st.binary(max_size=64))
    return whole


WORK = Path(tempfile.mkdtemp(prefix="composeloop-npz-fuzz-"))


def assert_usable(data: datasets.ArrayData) -> None:
    """What training needs of loaded data."""
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        assert x.dtype == np.float32 and np.isfinite(x).all() and x.ndim >= 1
        assert y.dtype == np.int32 and y.ndim == 1 and len(y) == len(x) > 0 and y.min() >= 0
    assert data.x_train.shape[1:] == data.x_val.shape[1:] == data.example_shape
    datasets.check_labels(data, data.num_classes)
    if data.num_classes > 1:
        with pytest.raises(DataError, match="model.num_classes"):
            datasets.check_labels(data, data.num_classes - 1)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(npz_contents(), st.booleans(), st.sampled_from(["npz"] * 9 + ["npy"]), st.data())
def test_any_npz_loads_usable_data_or_one_line_naming_the_file(arrays, compressed, kind, data):
    buffer = io.BytesIO()
    if kind == "npy":
        np.save(buffer, arrays.get("x_train", np.zeros(2)), allow_pickle=True)
    else:
        (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    path = WORK / "fuzz.npz"
    path.write_bytes(damaged(buffer.getvalue(), data.draw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded = datasets.load_npz(path)
        except DataError as error:
            message = str(error)
            assert str(path) in message and "\n" not in message and message.strip(), message
            event("refused: " + re.sub(r"[0-9]+|'[^']*'|\(.*", "", message.replace(str(path), "")).strip())
        else:
            assert_usable(loaded)
            event("loaded")
    assert not caught, [str(w.message) for w in caught]
