"""Reading and writing parameters by name: `.npz` and `.safetensors`.

Loading is strict, like torch's `load_state_dict(strict=True)`: a missing or
unexpected name, or a wrong shape or dtype, is an error that lists them all.
Like torch's copy into the model's tensors, `conform_params` first converts
floats to the model's float type (f32 files under --precision f64).
The safetensors format (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes) is small
enough to read and write here, so no extra dependency is needed.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from ember.ir.dims import fmt
from ember.ir.dtypes import dtype_from_np
from ember.ir.graph import TensorType
from ember.ir.loc import DSLError

from .files import printable, write_atomic

NpzFile = np.lib.npyio.NpzFile
# What reading a damaged or hostile .npz or .safetensors file can raise. json
# errors and bad UTF-8 are ValueErrors; a deeply nested JSON header recurses.
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, struct.error,
               zipfile.BadZipFile, zlib.error, NotImplementedError, RecursionError,
               MemoryError, OverflowError)

ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
             "BOOL": np.bool_, "F16": np.float16, "I8": np.int8, "U8": np.uint8,
             "BF16": np.uint16}  # read as bits, then widened (NumPy has no bfloat16)


def array_type(a: np.ndarray) -> str:
    """An array's dtype and shape written like an IR type: `f32[4, 3]`."""
    dt = dtype_from_np(a.dtype)
    return f"{dt if dt else a.dtype}{fmt(tuple(a.shape))}"


def convert(a: np.ndarray, want: np.dtype) -> np.ndarray | None:
    """`a` as `want` when that is what a user plainly means, else None: a float
    array to another float type (f64 -> f32 rounds, as torch's load_state_dict
    copies), integers to an integer type that holds every value (torch's int64
    labels). Floats for integers, integers for floats and out-of-range values
    would lose meaning: None."""
    if a.dtype == want:
        return a
    if a.dtype.kind == "f" and want.kind == "f":
        return a.astype(want)
    if a.dtype.kind in "iu" and want.kind in "iu":
        info = np.iinfo(want)
        if a.size == 0 or (int(a.min()) >= info.min and int(a.max()) <= info.max):
            return a.astype(want)
    return None


def conversion_note(what: str, a: np.ndarray, converted: np.ndarray) -> str:
    """One line saying what `convert` did; "(exact)" unless floats were rounded."""
    exact = a.dtype.kind in "iu" or converted.dtype.itemsize >= a.dtype.itemsize
    return f"{what}: {a.dtype} converted to {converted.dtype}" + (" (exact)" if exact else "")


def conform_params(params: dict[str, np.ndarray], expected: dict[str, TensorType],
                   source: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Loaded parameters converted to the model's dtypes where `convert` allows
    (an f32 file under --precision f64), then checked strictly; one note per
    kind of conversion, counting the parameters."""
    out = dict(params)
    done: dict[tuple[np.dtype, np.dtype], list[tuple[np.ndarray, np.ndarray]]] = {}
    for k in sorted(set(expected) & set(params)):
        a = params[k]
        c = convert(a, expected[k].dtype.np) if a.shape == expected[k].shape else None
        if c is not None and c is not a:
            out[k] = c
            done.setdefault((a.dtype, c.dtype), []).append((a, c))
    check_params(out, expected, source)
    return out, [conversion_note(f"{len(pairs)} parameters from '{source}'", *pairs[0])
                 for pairs in done.values()]


def save_params(path: str | Path, params: dict[str, np.ndarray]) -> None:
    path = Path(path)
    if path.suffix not in (".npz", ".safetensors"):
        raise DSLError(f"parameter files must end in .npz or .safetensors, found '{path.name}'")
    if path.suffix == ".safetensors":
        write_atomic(path, lambda f: f.write(_safetensors_bytes(params)), "parameter file")
    else:
        write_atomic(path, lambda f: save_npz(f, params), "parameter file")


def save_npz(f: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """Arrays by name into an open file (a file object: np.savez adds no ".npz")."""
    np.savez(f, **arrays)  # type: ignore[arg-type]  # the stub reads **kw as allow_pickle


def read_npz(path: str | Path, f: NpzFile) -> dict[str, np.ndarray]:
    """Every member of an open .npz archive; a member that is not a .npy array
    (np.load hands those back as raw bytes) is an error naming it."""
    out = {}
    for name in f.files:
        value = f[name]
        if not isinstance(value, np.ndarray):
            raise DSLError(f"'{path}' holds '{printable(name)}', which is not a .npy array")
        out[name] = value
    return out


def load_params(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DSLError(f"parameter file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            return _load_safetensors(path)
        if path.suffix == ".npz":
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, NpzFile):
                raise ValueError("a single .npy array, not an .npz archive of named arrays")
            with data as f:
                return read_npz(path, f)
    except READ_ERRORS as e:
        raise DSLError(f"cannot read parameter file '{path}': {_reason(e)}") from None
    raise DSLError(f"parameter files must end in .npz or .safetensors, found '{path.name}'")


def check_params(params: dict[str, np.ndarray], expected: dict[str, TensorType],
                 source: str) -> None:
    """Strict name, shape and dtype check of loaded parameters."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    wrong = [f"{k}: expected {expected[k]}, found {array_type(params[k])}"
             for k in sorted(set(expected) & set(params))
             if params[k].shape != expected[k].shape or params[k].dtype != expected[k].dtype.np]
    problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
        [f"unexpected: {', '.join(unexpected)}"] if unexpected else []) + wrong
    if problems:
        raise DSLError(f"parameters in '{source}' do not match the model:\n  "
                       + "\n  ".join(problems))


def _reason(e: BaseException) -> str:
    # np.load tries unpickling a file that is not an .npz; json errors are ValueErrors
    if "pickled" in str(e):
        return "not an .npz file"
    if isinstance(e, RecursionError):
        return "bad safetensors header (nested too deeply)"
    if isinstance(e, json.JSONDecodeError):
        return f"bad safetensors header ({e})"
    return printable(str(e))


def _safetensors_bytes(params: dict[str, np.ndarray]) -> bytes:
    names = {np.dtype(v): k for k, v in ST_DTYPES.items() if k != "BF16"}
    header, offset, blobs = {}, 0, []
    for name in sorted(params):
        a = np.ascontiguousarray(params[name]).reshape(np.shape(params[name]))  # keeps 0-d
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, info in header.items():
        if info["dtype"] not in ST_DTYPES:
            raise ValueError(f"tensor '{name}' has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dt = np.dtype(ST_DTYPES[info["dtype"]]).newbyteorder("<")
        a = np.frombuffer(raw[base + begin:base + end], dt).reshape(info["shape"]).astype(
            dt.newbyteorder("="))
        out[name] = _from_bf16(a) if info["dtype"] == "BF16" else a
    return out


def _from_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns as the float32 array that holds bf16 values (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
