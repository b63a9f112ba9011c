"""Writing ONNX graphs: atomically, with their metadata, and with one external-data sidecar when the
contract maps the graph's weights (``GraphSpec.mapped_weights``) or the graph is over protobuf's
2 GB limit. Shared by the export and quantize stages, which have the
``onnx`` package; the runtime itself never imports this module (it reads graphs through ONNX
Runtime and ``models``), so ``onnx`` is imported inside the functions.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from moebius_edge import contract, models

# Above this size any graph's weights go to a ``<name>.data`` sidecar (protobuf's 2 GB limit, with margin).
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
    its metadata first. The weights go to one sidecar (``models.external_data_path``) when the
    graph its metadata names (``contract.META_GRAPH``) has ``mapped_weights``, or over ``threshold``
    bytes; the sidecar empties the tensors of ``proto``: do not reuse it."""
    import onnx

    path = Path(path)
    if metadata:
        set_metadata(proto, metadata)
    graph = next((p.value for p in proto.metadata_props if p.key == contract.META_GRAPH), None)
    mapped = any(spec.mapped_weights for spec in contract.GRAPHS if spec.key == graph)
    sidecar = models.external_data_path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        big = mapped or proto.ByteSize() > threshold
        onnx.save_model(proto, str(tmp / path.name), save_as_external_data=big, all_tensors_to_one_file=True,
                        location=sidecar.name if big else None)
        if big:
            # onnx creates the sidecar owner-only; it is read like its graph (a shared models folder)
            os.chmod(tmp / sidecar.name, (tmp / path.name).stat().st_mode & 0o777)
            os.replace(tmp / sidecar.name, sidecar)  # the data first: the graph names it
        else:
            sidecar.unlink(missing_ok=True)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
