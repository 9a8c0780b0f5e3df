"""A local checkpoint's safetensors files, checked once when the config is built (front-end
process, before vLLM's loader opens any): every file model.safetensors.index.json names is
there, and every file holds exactly the bytes its header declares. Without this a truncated
file fails inside vLLM's loader with safetensors' "incomplete metadata, file not fully
covered", which names no file, and the GPTQ module scan takes a missing file's modules for
unquantized ones. Costs two small reads per file; no tensor is read.

safetensors layout: an 8-byte little-endian header length n, n bytes of JSON header
({tensor: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the
tensor data, which the offsets must cover exactly."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from .base import CheckpointError

INDEX = "model.safetensors.index.json"  # the index vLLM's loader filters the files with
_MAX_HEADER = 100 * 1024 * 1024          # safetensors' own limit on the JSON header
_FIX = "Fix: download the file again (its size must match the source's), or re-export the checkpoint."


def weight_files(model_dir: Path) -> list[Path]:
    """The *.safetensors files vLLM loads from `model_dir`: those the index names, if any."""
    index = model_dir / INDEX
    if not index.is_file():
        return sorted(model_dir.glob("*.safetensors"))
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({type(e).__name__}: {e}). {_FIX}") from e
    missing = [n for n in names if not (model_dir / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{model_dir}: {INDEX} names {len(names)} weight files, but {missing} "
            f"{'is' if len(missing) == 1 else 'are'} not in the directory, so the modules stored "
            f"there would be missing. Fix: download the missing file(s).")
    return [model_dir / n for n in names]


def read_header(path: Path) -> dict:
    """The JSON header of safetensors file `path`, once the file is known to be complete."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or n > _MAX_HEADER or 8 + n > size:
            announced = f"a {n}-byte header" if n >= 0 else "an 8-byte header length"
            raise CheckpointError(f"{path}: truncated or not a safetensors file: {size} bytes, too short "
                                  f"for {announced}. {_FIX}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        declared = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is corrupt ({type(e).__name__}: {e}). {_FIX}") from e
    data = size - 8 - n
    if data != declared:
        state = "truncated" if data < declared else "longer than its header says (corrupt)"
        raise CheckpointError(
            f"{path}: the file is {state}: its header declares {declared} bytes of tensor data, but "
            f"the file holds {data} ({size} bytes = 8 + {n}-byte header + data). {_FIX}")
    return header


def checked_tensor_dtypes(model_dir: Path) -> dict[str, str]:
    """{tensor name: safetensors dtype ('I32', 'F16', ...)} over the files vLLM loads from
    `model_dir`, every file checked as above."""
    out = {}
    for path in weight_files(model_dir):
        for name, info in read_header(path).items():
            if name != "__metadata__":
                out[name] = str(info.get("dtype", ""))
    return out
