"""Reads a ``.safetensors`` file into numpy arrays, without the ``safetensors`` package.

The format (https://huggingface.co/docs/safetensors): an unsigned little-endian 64-bit header length, a
JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
raw little-endian tensor bytes, offsets counted from the end of the header. The file is memory-mapped
read-only: tensors are views of the page cache until the model copies what it reshapes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


class WeightsError(Exception):
    """The file is not a readable safetensors file; the message says why."""


def load(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: {exc}") from None
    if data.size < 8:
        raise WeightsError(f"{path}: too short for a safetensors file")
    (header_length,) = struct.unpack("<Q", data[:8].tobytes())
    if header_length > MAX_HEADER_BYTES or 8 + header_length > data.size:
        raise WeightsError(f"{path}: header length {header_length} does not fit the file")
    try:
        header = json.loads(data[8 : 8 + header_length].tobytes())
    except ValueError as exc:
        raise WeightsError(f"{path}: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: header is not a JSON object")
    body = data[8 + header_length :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(DTYPES[entry["dtype"]])
            shape = tuple(int(size) for size in entry["shape"])
            begin, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r} has an unreadable entry {entry!r}") from None
        expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= body.size or end - begin != expected:
            raise WeightsError(
                f"{path}: tensor {name!r} has offsets {begin}..{end}, {expected} bytes expected"
            )
        tensors[name] = body[begin:end].view(dtype).reshape(shape)
    return tensors
