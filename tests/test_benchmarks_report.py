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
                "vae": {"vae_encoder": vae, "vae_decoder": vae}, "compute_s": 100 / speedup, "unet_step_s": 1.0,
                "model_steps": 19}

    r = {"runs": [run("torch", 1.0, 2700), run("fp32", 2.01, 2001), run("int8", 2.49, 1200, unet_load=3.5),
                  run("int8@out/x", 3.0, 1100, vae="int8"), run("fp32-keep", 1.9, 3000)]}
    verdicts = {(what, label): met for what, _, _, label, _, met, _ in target_rows(r)}
    assert verdicts[("whole inpainting, fp32", "fp32")] is True  # 2.01 ≥ 2
    assert verdicts[("peak RSS, fp32", "fp32")] is False  # 2,001 > 2,000
    assert verdicts[("whole inpainting, int8", "int8")] is False
    assert verdicts[("whole inpainting, int8", "int8 (x) + encoder and decoder int8")] is True
    assert verdicts[("whole inpainting, int8 (stretch)", "int8 (x) + encoder and decoder int8")] is True  # 3.0 ≥ 3
    assert verdicts[("peak RSS, int8", "int8")] is True  # at the bound
    assert verdicts[("int8 UNet session start", "int8")] is False
    assert verdicts[("peak RSS, low-memory mode with int8", "int8-low-memory")] is None
    text = targets(r)
    assert "| peak RSS, fp32 | ≤ 2,000 MB | fp32 | 2,001 MB | missed; profile: `benchmarks/graph_memory.py` |" in text
    assert "| int8-low-memory | not in this run | not measured |" in text
    # a header and 11 rows: fp32-keep is no fp32 run
    table = text.split("\n\nWhat a missed")[0]
    assert len([line for line in table.splitlines() if line.startswith("| ") and "---" not in line]) == 1 + 11
    # ratios against another first configuration are no verdict on the PyTorch targets
    rows = target_rows({"runs": r["runs"][1:]})
    assert {met for what, measure, *_, met, _ in rows if measure == "vs torch"} == {None}
    assert {met for what, measure, *_, met, _ in rows if measure != "vs torch" and "low-memory" not in what} == {True, False}


def test_a_missed_speed_target_says_what_it_asks_of_the_unet_step():
    """Under the targets, each missed speed target gets the seconds its bound allows and the UNet step
    it would take with the rest of the run as measured; met targets and memory misses get no row."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import targets

    def run(config, speedup, compute_s, step_s):
        return {"config": config, "speedup_vs_first": speedup, "peak_rss_mb": 900, "seconds": {"unet_load": 1.0},
                "compute_s": compute_s, "unet_step_s": step_s, "model_steps": 10}

    r = {"runs": [run("torch", 1.0, 120.0, 10.0), run("fp32", 1.5, 80.0, 6.0), run("int8", 2.6, 46.0, 3.0)]}
    text = targets(r)
    gaps = text.split("What a missed speed target asks")[1]
    # fp32: 120 / 2 = 60 s allowed; 80 s = 60 s of steps + 20 s rest; (60 - 20) / 10 = 4.0 s per step
    assert "| whole inpainting, fp32 | fp32 | 60.0 / 80.0 | 60.0 | 20.0 | 6.00 / 4.00 (33 % less) |" in gaps
    # int8 stretch: 120 / 3 = 40 s; rest 16 s; (40 - 16) / 10 = 2.4 s
    assert "| whole inpainting, int8 (stretch) | int8 | 40.0 / 46.0 | 30.0 | 16.0 | 3.00 / 2.40 (20 % less) |" in gaps
    assert "whole inpainting, int8 | int8 | " not in gaps  # 2.6 ≥ 2.5: met
    assert "What a missed" not in targets({"runs": [run("torch", 1.0, 120.0, 10.0), run("fp32", 2.1, 57.0, 4.0)]})


def test_step_profile_rows_add_up_to_the_kernels():
    """The step profile's rows: each convolution kind with its rate, the layout and INT8-edge
    operators summed, and everything else as the remainder, so the rows add up to all kernels."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import int8_profile

    machine = {"processor": "cpu", "cores": 2, "load_average": [1.0], "onnxruntime": "1", "avx2": True,
               "avx512f": False, "avx512_vnni": False}
    ops = [{"op": "Conv", "ms_per_step": 60.0}, {"op": "Transpose", "ms_per_step": 10.0},
           {"op": "ReorderOutput", "ms_per_step": 5.0}, {"op": "DequantizeLinear", "ms_per_step": 4.0},
           {"op": "Add", "ms_per_step": 21.0}]
    p = {"kernel_ms_per_step": 100.0, "by_op": ops, "conv_ms_per_step_by_kind": {"1x1": 40.0, "3x3": 20.0},
         "conv_gop_per_s_by_kind": {"1x1": 250.0, "3x3": 1500.0}}
    text = int8_profile({"machine": machine, "profiles": {"fp32": p, "int8": p}})
    assert "| 1x1 convolutions | 40 (250) | 40 (250) |" in text and "| 3x3 convolutions | 20 (1,500) |" in text
    assert "| layout: Transpose, ReorderInput, ReorderOutput | 15 | 15 |" in text
    assert "| INT8 edges: QuantizeLinear, DequantizeLinear | 4 | 4 |" in text
    assert "| everything else (norms, MatMuls, Gemms, element-wise) | 21 | 21 |" in text


def test_pipeline_rounds_give_median_rows_per_round_ratios_and_the_highest_peak():
    """--rounds: a row is its configuration's median round, its ratio the median of the ratios taken
    round by round (not the ratio of medians), and a memory target is checked on the highest peak."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.pipeline import summarise
    from benchmarks.report import pipeline, target_rows

    def run(config, compute, peak):
        return {"config": config, "compute_s": compute, "unet_step_s": compute / 19, "peak_rss_mb": peak,
                "image_px": [512, 512], "model_steps": 19, "load_s": 1.0, "vae": {},
                "seconds": {"encode": 1.0, "decode": 1.0, "unet_load": 1.0},
                "phase_peak_rss_mb": {"encode": 1, "denoise": 1, "decode": peak}}

    torch = [run("torch", t, 2000) for t in (100.0, 150.0, 120.0)]
    int8 = [run("int8", t, p) for t, p in ((50.0, 1100), (50.0, 1250), (40.0, 1150))]
    rows = [summarise(torch, torch), summarise(int8, torch)]
    assert rows[0]["speedup_vs_first"] == 1.0 and rows[0]["compute_s"] == 120.0
    assert rows[1]["compute_s"] == 50.0  # the lower median of 40, 50, 50
    assert rows[1]["speedup_vs_first"] == 3.0  # median of 2.0, 3.0, 3.0; the ratio of medians is 2.4
    assert [x["speedup_vs_first"] for x in rows[1]["rounds"]] == [2.0, 3.0, 3.0]
    r = {"rounds": 3, "runs": rows, "machine": {"processor": "cpu", "cores": 2, "onnxruntime": "1",
                                                 "load_average": [1.0]}}
    peaks = {(what, label): value for what, _, _, label, value, _, _ in target_rows(r)}
    assert peaks[("peak RSS, int8", "int8")] == 1250
    text = pipeline(r)
    assert "| 3.00x (2.00–3.00) |" in text and "(max 1,250)" in text and "| 1.00x |" in text


def test_pipeline_later_calls_get_a_row_each():
    """--calls N: the table's rows stay the first call's, and each later call of a configuration
    gets a row of its own in a second table, with its phases' peaks."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import pipeline

    def call(compute, peaks):
        return {"compute_s": compute, "load_s": 2.0, "peak_rss_mb": max(peaks),
                "phase_peak_rss_mb": dict(zip(("encode", "denoise", "decode"), peaks))}

    first = {"config": "int8", "unet_step_s": 1.7, "image_px": [512, 512], "model_steps": 19, "vae": {},
             "seconds": {"encode": 8.0, "decode": 9.0}, "speedup_vs_first": 1.0, **call(50.0, (766, 488, 988)),
             "later_calls": [call(49.0, (1101, 1170, 990))]}
    r = {"rounds": 1, "calls": 2, "runs": [first],
         "machine": {"processor": "cpu", "cores": 2, "onnxruntime": "1", "load_average": [1.0]}}
    text = pipeline(r, figure=False)
    assert "| int8 | 1.70 | 8.0 | 9.0 | 50.0 | 1.00x | 2.0 | 988 | 766 / 488 / 988 |" in text
    assert "`--calls 2`" in text
    assert "| int8 | 1 | 50.0 | 2.0 | 988 | 766 / 488 / 988 |" in text  # load_s less opening the folder (none here)
    assert "| int8 | 2 | 49.0 | 2.0 | 1,170 | 1,101 / 1,170 / 990 |" in text


def test_bench_line_gives_each_step_and_the_verdict_against_the_budget():
    """benchmarks/bench.py's record: the whole run against its budget, each step's minutes, and the
    pipeline step's configurations."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.report import bench

    pipeline_args = ["--models", "m", "--configs", "torch,int8", "--rounds", "1", "--batch", "0", "--json", "p.json"]
    r = {"budget_s": 900, "wall_s": 840.0, "machine": {"processor": "cpu", "cores": 2, "load_average": [1.0],
                                                       "onnxruntime": "1", "avx2": True, "avx512f": False,
                                                       "avx512_vnni": False},
         "steps": [{"step": "graph_step", "arguments": [], "wall_s": 240.0},
                   {"step": "pipeline", "arguments": pipeline_args, "wall_s": 420.0},
                   {"step": "photo_size", "arguments": [], "wall_s": 180.0}]}
    line = bench(r)
    assert "**14.0 min**" in line and "`graph_step` 4.0, `pipeline` 7.0, `photo_size` 3.0 min" in line
    assert "`--models m --configs torch,int8 --rounds 1 --batch 0`" in line and "within it" in line
    assert "over it" in bench({**r, "wall_s": 901.0})
