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


def test_targets_table_gives_each_run_its_verdict():
    """Each target is checked on every run of its configuration, an opt-in variant (``int8@DIR``) on a row of
    its own; a miss names its profile, and a configuration the run left out is said not measured."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import target_rows, targets

    def run(config, speedup, peak, unet_load=1.0, vae="fp32"):
        return {"config": config, "speedup_vs_first": speedup, "peak_rss_mb": peak, "seconds": {"unet_load": unet_load},
                "vae": {"vae_encoder": vae, "vae_decoder": vae}}

    r = {"runs": [run("torch", 1.0, 2700), run("fp32", 2.01, 2001), run("int8", 2.49, 1200, unet_load=3.5),
                  run("int8@out/x", 3.0, 1100, vae="int8"), run("fp32-keep", 1.9, 3000)]}
    verdicts = {(what, label): met for what, _, _, label, _, met in target_rows(r)}
    assert verdicts[("whole inpainting, fp32", "fp32")] is True  # 2.01 ≥ 2
    assert verdicts[("peak RSS, fp32", "fp32")] is False  # 2,001 > 2,000; fp32-keep is not fp32
    assert verdicts[("whole inpainting, int8", "int8")] is False
    assert verdicts[("whole inpainting, int8", "int8 (x) + encoder and decoder int8")] is True
    assert verdicts[("whole inpainting, int8 (stretch)", "int8 (x) + encoder and decoder int8")] is True  # 3.0 ≥ 3
    assert verdicts[("peak RSS, int8", "int8")] is True  # at the bound
    assert verdicts[("int8 UNet session start", "int8")] is False
    assert verdicts[("peak RSS, low-memory mode with int8", "int8-low-memory")] is None
    text = targets(r)
    assert "| peak RSS, fp32 | ≤ 2,000 MB | fp32 | 2,001 MB | missed; profile: `benchmarks/graph_memory.py` |" in text
    assert "| int8-low-memory | not in this run | not measured |" in text
    assert len([line for line in text.splitlines() if line.startswith("| ") and "---" not in line]) == 1 + 11
