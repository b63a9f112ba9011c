"""README numbers come from benchmarks/results/*.json through benchmarks/report.py, never typed."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_benchmark_results():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_int8_tradeoff_table_names_its_passes():
    """Candidates re-timed in a pass of their own (e.g. after an export change) are said to be."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import quantize_int8

    def row(name, pass_, models=None):
        lat = {"ratio": 0.5, "interleaved_with": ["fp32", *pass_]}
        return {"name": name, "exclude": [], "activation_type": "uint8", "unet_ratio": 0.26, "latency": lat,
                "eps": {"cosine_mean": 0.9}, **({"models": models} if models else {})}

    st = [{"name": n, "exclude": [], "activation_type": "uint8", "gate": "passed", "hole_psnr_min_db": 40.0,
           "eps_cosine_mean": 0.99} for n in "abc"]
    machine = {"processor": "cpu", "cores": 2, "onnxruntime": "1"}
    one = [row("a", "abc"), row("b", "abc"), row("c", "abc")]
    two = [row("a", "abc"), row("b", "bc", "/x/full2"), row("c", "bc", "/x/full2")]
    text = {k: quantize_int8({"machine": machine, "standin": {"tradeoff": st}, "full_random_init": {"tradeoff": rows}})
            for k, rows in (("one", one), ("two", two))}
    assert "passes" not in text["one"]
    assert "come from 2 passes" in text["two"] and "a on an earlier export; b, c on `full2`." in text["two"]
