"""Writing ONNX graphs: atomically, with their metadata, and with one external-data sidecar when a
graph is over protobuf's 2 GB limit. Shared by the export and quantize stages, which have the
``onnx`` package; the runtime itself never imports this module (it reads graphs through ONNX
Runtime and ``models``), so ``onnx`` is imported inside the functions.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from moebius_edge import models

# Above this size a graph's weights go to a ``<name>.data`` sidecar (protobuf's 2 GB limit, with margin).
EXTERNAL_DATA_THRESHOLD_BYTES = int(1.8e9)


def metadata(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def set_metadata(proto, updates: dict) -> None:
    """Merge ``updates`` into the ONNX metadata (values are text; structured values as JSON)."""
    merged = {**metadata(proto), **{k: v if isinstance(v, str) else json.dumps(v) for k, v in updates.items()}}
    del proto.metadata_props[:]
    for k, v in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def save(proto, path, metadata: dict | None = None, threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES) -> Path:
    """Write ``proto`` to ``path`` atomically (temporary folder + renames), ``metadata`` merged into
    its metadata first. Over ``threshold`` bytes the weights go to one sidecar
    (``models.external_data_path``), which empties the tensors of ``proto``: do not reuse it."""
    import onnx

    path = Path(path)
    if metadata:
        set_metadata(proto, metadata)
    sidecar = models.external_data_path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        big = proto.ByteSize() > threshold
        onnx.save_model(proto, str(tmp / path.name), save_as_external_data=big, all_tensors_to_one_file=True,
                        location=sidecar.name if big else None)
        if big:
            os.replace(tmp / sidecar.name, sidecar)  # the data first: the graph names it
        else:
            sidecar.unlink(missing_ok=True)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
