"""The machine a benchmark ran on, for its JSON: every result file records it (these machines are
shared and noisy, so a number is only read beside the machine and load that produced it)."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def describe() -> dict:
    """CPU model and the flags that decide kernel paths, cores, load, Python and onnxruntime."""
    import onnxruntime as ort

    model, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), model)
        flags = set(next((ln.split(":", 1)[1] for ln in info if ln.startswith("flags")), "").split())
    except OSError:
        pass
    return {"processor": model, "cores": os.cpu_count(), "load_average": list(os.getloadavg()),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "avx512_vnni": "avx512_vnni" in flags}


def save_record(path: Path, name: str, record: dict, group: str = "bundles") -> None:
    """Put ``record`` at ``group.name`` of the JSON file ``path`` (kept: the file's other records)
    and stamp the machine, on the record and on the file. The file is read just before it is written, so two processes adding
    records at once both land in it."""
    import json

    results = json.loads(path.read_text()) if path.is_file() else {}
    machine = describe()
    results.setdefault(group, {})[name] = {**record, "machine": machine}
    results["machine"] = machine
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
