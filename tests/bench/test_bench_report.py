"""bench/report.py on a synthetic results file: the tables README gets, the summary, merging, and the CLI."""

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name, path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


report = _load("fastgan_bench_report", BENCH / "report.py")

README = f"""# fastgan

## Performance

How the figures are made.

{report.BEGIN}
stale text
{report.END}

## Development
"""


def bench(fullname, **extra_info):
    name = fullname.split("::")[1]
    return {"group": None, "name": name, "fullname": fullname, "params": {}, "param": name.split("[")[-1][:-1],
            "extra_info": extra_info, "options": {}, "stats": {"median": 0.01, "rounds": 10}}


def train(case, variant, ms, ref_ms=None, **more):
    info = {"variant": variant, "ms_per_step": ms, **more}
    if ref_ms is not None:
        info.update(reference_ms_per_step=ref_ms, speedup_vs_reference=ref_ms / ms)
    return bench(f"bench/test_train_step.py::test_train_step[{case}-{variant}]", **info)


def synthetic(date="20261201", finished="2026-12-01T10:00:00Z"):
    cyclegan = {"model": "cyclegan", "image_size": 256, "batch_size": 1, "upsample": "deconv"}
    dcgan = {"model": "dcgan", "image_size": 64, "batch_size": 128}
    kernel = {"op": "instance_norm_act", "shape": [4, 256, 64, 64], "dtype": "bf16", "layout": "nhwc",
              "passes": "fwd+bwd", "impl": "triton", "ms": 0.1234, "gbps": 2718.3, "pct_of_copy": 63.2,
              "speedup": 2.5, "speedup_vs_torch": 3.1}
    return {
        "machine_info": {"node": "gpu"}, "commit_info": {"id": "unversioned"}, "datetime": "x", "version": "5",
        "benchmarks": [
            train("cyclegan-256px-bs1-deconv", "reference", 20.0, **cyclegan),
            train("cyclegan-256px-bs1-deconv", "compile", 15.0, 20.0, **cyclegan),
            train("cyclegan-256px-bs1-deconv", "fastgan", 5.0, 20.0, **cyclegan,
                  impl={"instance_norm_act": "triton", "reflect_pad_conv2d": "cuda"}),
            train("dcgan-64px-bs128", "reference", 9.87, **dcgan),
            train("dcgan-64px-bs128", "fastgan-eager", 4.0, 9.87, **dcgan),
            bench("bench/test_train_step.py::test_fashion_mnist_epoch", iterations=937, batch_size=64,
                  loader="device", seconds_per_epoch=1.876, images_per_s=31975.4),
            bench("bench/test_ops.py::test_instance_norm_act[triton-fwd+bwd-bf16-nhwc-4x256x64x64]", **kernel),
            bench("bench/test_ops.py::test_instance_norm_act[ref-fwd+bwd-bf16-nhwc-4x256x64x64]",
                  **{**kernel, "impl": "ref", "ms": 0.3}),
            bench("bench/test_ops.py::test_instance_norm_act[triton-fwd-fp32-nchw-4x256x64x64]",
                  **{**kernel, "dtype": "fp32", "layout": "nchw", "passes": "fwd", "ms": 0.05}),
            bench("bench/test_ops.py::test_ops_copy_bandwidth", op="copy", impl="torch", gbps=4301.2),
            bench("bench/test_ops_conv.py::test_generator_total[1-fwd+bwd]", op="reflect_pad_conv2d", impl="cuda",
                  n=1, mode="fwd+bwd", total_ms=3.21, total_ref_ms=4.5, speedup=1.4, min_layer_speedup=1.05),
            bench("bench/test_ops_conv.py::test_resnet_block_pad_wiring[fwd+bwd-1-pad_in_norm]", op="resnet_block",
                  wiring="pad_in_norm", impl="instance_norm_act=triton, reflect_pad_conv2d=cuda", n=1,
                  mode="fwd+bwd", ms=0.25, ref_ms=0.5, speedup=2.0),
            bench("bench/test_ops.py::test_instance_norm_act_fused_vs_split[fwd+bwd-1x256x64x64-pad1]",
                  op="instance_norm_act", impl="triton", path="fused", ms=0.02, split_ms=0.03, speedup_vs_split=1.5,
                  shape=[1, 256, 64, 64], pad=1, layout="nhwc", dtype="bf16", passes="fwd+bwd"),
            bench("bench/test_data.py::test_unpaired_jpeg_folder[dali-8]", impl="dali", loader="dali",
                  dataset="unpaired-jpeg-256", batch_size=8, pairs_per_s=812.5, ratio_to_reference=3.25),
        ],
        "fastgan": {
            "schema": report.SCHEMA, "gpu": "NVIDIA H100 80GB HBM3", "gpu_slug": "nvidia-h100-80gb-hbm3",
            "date": date, "digest": "d" * 64, "sha": "abc1234", "head": "abc1234", "dirty": False,
            "dry_run": False, "planned_pieces": ["1", "2", "3"],
            "env": {"driver": "580.65", "cuda": "13.0", "cudnn": 91900, "torch": "2.11.0", "triton": "3.6.0",
                    "python": "3.12.3", "dali": None, "capability": "9.0"},
            "pieces": {
                "1": {"title": "tests", "started": "s", "finished": finished, "status": "failed", "steps": [
                    {"name": "cuda-tests", "status": "failed", "seconds": 201.4, "budget_s": 360,
                     "counts": {"passed": 300, "failed": 1, "error": 0, "skipped": 18},
                     "skips": {"NVIDIA DALI is not installed": 18},
                     "failures": [{"nodeid": "tests/ops/test_leaky_relu.py::test_grad[cuda-bf16]",
                                   "outcome": "failed", "message": "AssertionError: dx differs"}]}]},
                "2": {"title": "ops", "started": "s", "finished": finished, "status": "passed", "steps": [
                    {"name": "ops", "status": "passed", "seconds": 140.0, "budget_s": 240,
                     "counts": {"passed": 176, "failed": 0, "error": 0, "skipped": 0}, "failures": []}]},
            },
        },
    }


def write(folder, name, results):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(results))
    return folder / name


def test_training_table_has_every_variant_and_the_speedups():
    text = report.performance_markdown(synthetic(), "bench/results/r.json")
    assert ("| model | image | batch | reference fp32 eager | torch.compile | torch.compile \"reduce-overhead\" "
            "| fastgan eager --amp | fastgan --amp --cuda-graphs |") in text
    assert "| cyclegan (deconv) | 256² | 1 | 20.0 ms | 15.0 ms (1.33×) | — | — | 5.00 ms (4.00×) |" in text
    assert "| dcgan | 64² | 128 | 9.87 ms | — | — | 4.00 ms (2.47×) | — |" in text
    assert text.index("| cyclegan (deconv)") < text.index("| dcgan |")
    assert "One Fashion-MNIST DCGAN epoch (937 iterations at batch 64, --amp --cuda-graphs, device loader): " \
           "1.88 s (31975 images/s)." in text


def test_readme_block_names_its_provenance_and_counts_failures():
    text = report.performance_markdown(synthetic(), "bench/results/r.json")
    assert text.startswith("Measured by `bench/gpu-check` on **NVIDIA H100 80GB HBM3** on 2026-12-01, commit "
                           "`abc1234`: driver 580.65, CUDA 13.0, cuDNN 91900, torch 2.11.0, triton 3.6.0, "
                           "Python 3.12.3, without DALI. Pieces: 1 failed, 2 passed, 3 not run.")
    assert "[`bench/results/r.md`](bench/results/r.md)" in text
    assert "Tests run by gpu-check: 476 passed, 1 failed, 0 error, 18 skipped. 1 failing test ids" in text


def test_kernel_table_shows_only_the_fast_path_in_bf16_nhwc_forward_backward():
    text = report.performance_markdown(synthetic(), "r.json")
    assert "device copy: 4301 GB/s" in text
    rows = [line for line in text.splitlines() if line.startswith("| instance_norm_act")]
    assert rows == ["| instance_norm_act | 4×256×64×64 | bf16 | nhwc | fwd+bwd | triton | 0.123 | 2718 | 63.2 % "
                    "| 2.50× | 3.10× |"]
    assert "| 1 | fwd+bwd | cuda | 3.21 | 4.50 | 1.40× | 1.05× |" in text
    assert "| unpaired-jpeg-256 | 8 | dali (dali) | 812 pairs/s | 3.25× |" in text


def test_summary_lists_every_failure_by_test_id_and_the_pieces_not_run():
    results = synthetic()
    text = report.summary_markdown(results, "r.json")
    assert ("- piece 1 (cuda-tests): failed `tests/ops/test_leaky_relu.py::test_grad[cuda-bf16]` — "
            "AssertionError: dx differs") in text
    assert "| 1 | cuda-tests | failed | 201 s | 360 s | 300 | 1 | 0 | 18 |" in text
    assert "Not run yet: pieces 3." in text
    assert "- 18 × NVIDIA DALI is not installed" in text
    assert "- fastgan: instance_norm_act=triton, reflect_pad_conv2d=cuda" in text
    # the summary keeps the rows README leaves out
    assert "| instance_norm_act | 4×256×64×64 | fp32 | nchw | fwd | triton | 0.0500 |" in text
    assert ("| pad_in_norm | 1 | fwd+bwd | instance_norm_act=triton, reflect_pad_conv2d=cuda | 0.250 | 0.500 | 2.00× |"
            in text)
    assert "| 1×256×64×64 | 1 | fwd+bwd | fused | 0.0200 | 0.0300 | 1.50× |" in text
    results["fastgan"]["pieces"]["1"]["steps"][0]["failures"] = []
    assert "## Failures\n\nNone." in report.summary_markdown(results, "r.json")


def test_merge_replaces_a_rerun_piece_and_its_figures_and_keeps_the_rest():
    old = synthetic()
    new = copy.deepcopy(old)
    new["benchmarks"] = [train("cyclegan-256px-bs1-deconv", "fastgan", 4.0, 20.0, model="cyclegan",
                               image_size=256, batch_size=1, upsample="deconv")]
    new["fastgan"]["pieces"] = {"2": {"title": "ops", "started": "t", "finished": "2026-12-02T00:00:00Z",
                                      "status": "timeout", "steps": []}}
    new["fastgan"]["date"] = "20261202"
    merged = report.merge(old, new)
    assert merged["fastgan"]["pieces"]["2"]["status"] == "timeout"
    assert merged["fastgan"]["pieces"]["1"]["status"] == "failed"
    assert merged["fastgan"]["date"] == "20261201"  # a file keeps the date of its first piece
    assert len(merged["benchmarks"]) == len(old["benchmarks"])
    fastgan = [b for b in merged["benchmarks"] if b["fullname"].endswith("bs1-deconv-fastgan]")]
    assert [b["extra_info"]["ms_per_step"] for b in fastgan] == [4.0]
    assert old["fastgan"]["pieces"]["2"]["status"] == "passed"  # inputs untouched


def test_newest_goes_by_date_and_ignores_dry_runs_and_foreign_json(tmp_path):
    write(tmp_path, "b.json", synthetic(date="20261130"))
    write(tmp_path, "a.json", synthetic(date="20261201"))
    dry = synthetic(date="20261205")
    dry["fastgan"]["dry_run"] = True
    write(tmp_path, "c.json", dry)
    write(tmp_path, "d.json", {"benchmarks": []})
    assert report.newest(tmp_path) == tmp_path / "a.json"
    assert report.newest(tmp_path / "missing") is None


def test_cli_writes_not_measured_then_the_table_and_check_tells_stale(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    results = tmp_path / "results"
    results.mkdir()
    argv = ["--results", str(results), "--page", str(readme)]
    assert report.main(argv) == 0
    text = readme.read_text()
    assert f"{report.BEGIN}\n{report.NOT_MEASURED}\n{report.END}" in text
    assert "stale text" not in text and text.endswith("## Development\n") and "How the figures are made." in text
    assert report.main([*argv, "--check"]) == 0

    write(results, "nvidia-h100-20261201-abc1234.json", synthetic())
    assert report.main([*argv, "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert report.main(argv) == 0
    text = readme.read_text()
    assert "| cyclegan (deconv) | 256² | 1 | 20.0 ms |" in text and report.NOT_MEASURED not in text
    assert report.main([*argv, "--check"]) == 0
    assert report.main(argv) == 0 and readme.read_text() == text  # idempotent


def test_cli_refuses_a_readme_without_markers(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert report.main(["--results", str(tmp_path), "--page", str(readme)]) == 2
    assert "markers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        report.main(["--results", str(tmp_path / "nope"), "--page", str(readme)])
    assert e.value.code == 2


def test_the_repository_readme_is_what_its_results_give():
    """docs/engine-and-performance.md's Performance block is generated: hand edits between the markers fail here."""
    text = report.PAGE.read_text()
    assert report.replace_block(text, report.readme_block()) == text


@pytest.mark.parametrize("value, text", [
    (1234.5, "1234"), (12.345, "12.3"), (1.2345, "1.23"), (0.012345, "0.0123"), (0.5, "0.500"), (0, "0"),
    (None, "—"), (float("nan"), "—"),
])
def test_num(value, text):
    assert report.num(value) == text
