"""scripts/bench_codecs.py, the recipe: its flags, and tables and figures redone from a CSV (--from-csv).
The measurements and outputs it calls are tested where they live (metrics.codec_bench, report.codec_rd)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from splitinfer.report import codec_rd

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_codecs.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_codecs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_codecs"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_codecs", None)


def test_flags(bench):
    a = bench.parse_args(["--quick"])
    assert a.cuts == [1, 15, 29] and a.n_windows == 2 and a.seq_len == 128 and "petals_blockwise8" in a.codecs
    assert a.corpora == ["pydoc"] and bench.parse_args([]).corpora == ["pydoc", "licenses"]
    a = bench.parse_args(["--cuts", "4,8", "--codecs", "int8,fp16", "--n-windows", "3"])
    assert a.cuts == [4, 8] and a.codecs == ["int8", "fp16"] and a.n_windows == 3 and a.seq_len == 256


def test_from_csv_writes_the_tables_and_both_figures(bench, tmp_path, capsys, plot_check):
    row = {"corpus": "pydoc", "bits_per_value_1tok": 9.0, "delta_ppl_ci_lo": 0.0, "delta_ppl_ci_hi": 0.4,
           "kl_nats": 0.001, "top1_agree": 0.99, "step_us": 200.0}
    rows = [{**row, "cut": cut, "codec": name, "bits_per_value": bits, "delta_ppl_pct": dppl}
            for cut in (1, 15) for name, bits, dppl in (("fp16", 16.0, 0.0), ("int8", 8.1, 0.2))]
    codec_rd.write_csv(rows, tmp_path / "in.csv")
    bench.main(["--from-csv", str(tmp_path / "in.csv"), "--out-dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    assert md == codec_rd.markdown_table(codec_rd.read_csv(tmp_path / "in.csv")) + "\n\n" + codec_rd.target_table(
        codec_rd.read_csv(tmp_path / "in.csv")) + "\n"
    assert "wrote " in capsys.readouterr().out
    plot_check(tmp_path / "out" / "rate_distortion.png")
    plot_check(tmp_path / "out" / "rate_distortion_kl.png")


def test_a_bad_codec_entry_is_one_line(bench, tmp_path):
    with pytest.raises(SystemExit, match="^--codecs entry 'ec37g:coder': 'coder' is not key=value"):
        bench.main(["--model", "tiny-llama", "--cuts", "1", "--codecs", "ec37g:coder", "--out-dir", str(tmp_path)])
