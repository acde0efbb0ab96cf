"""Arrays and numpy scalars as ``.npy`` bytes, never with pickle.

numpy is imported only when a value needs it: a value cannot be a numpy array
unless numpy is already loaded.
"""

from __future__ import annotations

import io
import math
import sys
from typing import Any

from .buffers import BytesLike, fresh_buffer
from .encoded import NoSafeFormat, Parts


def encode_npy(value: Any) -> Parts:
    """A header and the array's own memory; raises ``NoSafeFormat`` for anything else."""
    np = sys.modules.get("numpy")
    if np is None:  # numpy was never imported, so the value cannot be one of its types
        raise NoSafeFormat
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        value = np.asarray(value)
    elif type(value) not in (np.ndarray, np.memmap):
        raise NoSafeFormat
    if value.dtype.hasobject:
        raise NoSafeFormat
    fmt = np.lib.format
    if not (value.flags.c_contiguous or value.flags.f_contiguous):
        value = np.ascontiguousarray(value)
    header = fmt.header_data_from_array_1_0(value)
    head = io.BytesIO()
    try:
        fmt.write_array_header_1_0(head, header)
    except ValueError:  # a very wide structured dtype needs the 2.0 header
        fmt.write_array_header_2_0(head, header)
    flat = value.T if header["fortran_order"] else value
    body = flat.reshape(-1).view(np.uint8) if value.size else b""
    # The array's own memory, not a copy: whoever joins the parts copies it once.
    return (head.getvalue(), memoryview(body))


def decode_npy(data: BytesLike, type_name: str) -> Any:
    """The array (or numpy scalar) back, in memory it owns; object arrays are refused."""
    import numpy as np

    fmt = np.lib.format
    stream = io.BytesIO(bytes(data[: 65536 + 64]))  # the header only: the data is read in place below
    version = fmt.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=65536)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=65536)
    else:
        raise ValueError(f"npy version {version} is not supported")
    if dtype.hasobject:
        raise ValueError("the array holds Python objects, which only pickle can restore")
    count = math.prod(shape)
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError("the array data does not match its header")
    # One copy, into memory the array then owns: writable, like np.load gives. A
    # memcpy does not care where the data sits in the package; numpy's own copy
    # of a misaligned float64 buffer runs element by element, about 10x slower.
    raw = fresh_buffer(count * dtype.itemsize)
    raw[:] = memoryview(data).cast("B")[offset:]
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    if array.ndim == 0 and type_name not in ("numpy.ndarray", "numpy.memmap"):
        return array[()]  # it left as a numpy scalar
    return array
