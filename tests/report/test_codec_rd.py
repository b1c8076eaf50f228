"""splitinfer.report.codec_rd: the codec benchmark's CSV round trip, tables and both figures, from fake rows."""

from __future__ import annotations

from splitinfer.report import codec_rd


def _rows():
    rows = []
    for corpus in ("pydoc", "licenses"):
        for cut in (1, 15):
            for name, bits, dppl in (("fp16", 16.0, 0.0), ("petals_blockwise8", 8.07, 0.2), ("ec40", 3.4, 0.6),
                                     ("ec37g_s", 3.2, 0.8), ("int3_b64_outlier_rot_log8_tc", 3.5, 2.5)):
                rows.append({"corpus": corpus, "cut": cut, "codec": name, "bits_per_value": bits,
                             "bits_per_value_1tok": bits + (0.05 if name.endswith("_s") else 1.6),
                             "ratio_vs_fp32": 32 / bits,
                             "ratio_vs_fp16": 16 / bits, "delta_ppl_pct": dppl, "delta_ppl_ci_lo": dppl - 0.3,
                             "delta_ppl_ci_hi": dppl + 0.3, "kl_nats": dppl / 100 + 1e-7, "top1_agree": 0.95,
                             "rel_l2_err": 0.01, "step_us": 300.0, "encdec_MBps": 500.0, "encdec_MBps_median": 400.0,
                             "enc_MBps": 900.0, "dec_MBps": 1000.0, "ppl_ref": 10.0, "ppl": 10.1, "wire_bytes": 1000,
                             "values": 2000, "tokens": 20})
    return rows


def test_tables_csv_and_figures(tmp_path, plot_check):
    rows = _rows()
    codec_rd.write_csv(rows, tmp_path / "r.csv")
    back = codec_rd.read_csv(tmp_path / "r.csv")
    assert [(r["corpus"], r["cut"], r["codec"]) for r in back] == [(r["corpus"], r["cut"], r["codec"]) for r in rows]
    table = codec_rd.markdown_table(back)
    assert "`ec40`" in table and "Δppl % cut 15" in table and "**licenses**" in table
    target = codec_rd.target_table(back)
    # ec40 is smaller in prefill but its decode steps are not: the session codec is the one within target
    assert "| licenses | 1 | `ec37g_s` | 3.200 / 3.250 | +0.80 [+0.50, +1.10]" not in target
    assert "| licenses | 15 | none; best ≤ 3.5 bits: `ec37g_s` | 3.200 / 3.250 | +0.80 [+0.50, +1.10]" in target
    codec_rd.plot(back, tmp_path / "rd.png")
    codec_rd.plot(back, tmp_path / "rd_kl.png", metric="kl_nats")
    plot_check(tmp_path / "rd.png")
    plot_check(tmp_path / "rd_kl.png")


def test_csv_appender_writes_the_header_once_and_each_row_at_once(tmp_path):
    path = tmp_path / "sub" / "bisect.csv"
    first, second = _rows()[:2]
    with codec_rd.csv_appender(path) as record:
        record(first)
        assert len(codec_rd.read_csv(path)) == 1  # flushed: a run cut short keeps what it measured
    with codec_rd.csv_appender(path) as record:  # a second (resumed) run appends under the same header
        record(second)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(codec_rd.COLUMNS) and len(lines) == 3
    back = codec_rd.read_csv(path)
    assert [(r["codec"], r["bits_per_value"]) for r in back] == [(first["codec"], 16.0), (second["codec"], 8.07)]


def test_bound_table_picks_the_fewest_bits_within_the_bound():
    row = {"corpus": "readmes", "cut": 4, "bits_per_value_1tok": 3.0, "delta_ppl_pct": 0.3, "delta_ppl_ci_lo": -0.2,
           "kl_nats": 0.01, "corpus_digest": "d"}
    rows = [{**row, "codec": "ec25g_s:step=0.29", "bits_per_value": 3.2, "delta_ppl_ci_hi": 1.2},
            {**row, "codec": "ec25g_s:step=0.23", "bits_per_value": 3.6, "delta_ppl_ci_hi": 0.8},
            {**row, "codec": "ec25g_s:step=0.17", "bits_per_value": 4.1, "delta_ppl_ci_hi": 0.5},
            {**row, "codec": "ec25g_s:step=0.17", "bits_per_value": 4.1, "delta_ppl_ci_hi": 0.5}]  # a reused repeat
    table = codec_rd.bound_table(codec_rd.dedupe(rows))
    assert "| readmes | 4 | `ec25g_s:step=0.23` | **3.60** |" in table
    assert "0.29 (3.20 ✗), 0.23 (3.60 ✓), 0.17 (4.10 ✓)" in table
    assert "≤ 3.5 bits within the bound at 0 of 1 cuts" in table


def test_heldout_table_shows_each_cut_at_the_step_chosen_on_the_tuning_corpus():
    base = {"bits_per_value_1tok": 3.0, "delta_ppl_pct": 0.3, "delta_ppl_ci_lo": -0.2, "kl_nats": 0.01,
            "corpus_digest": "d"}
    tuning = [{**base, "corpus": "pydoc", "cut": c, "codec": "ec25g_s:step=0.29", "bits_per_value": 3.3,
               "delta_ppl_ci_hi": 0.9} for c in (1, 2)]
    checks = [{**base, "corpus": "licenses", "cut": 1, "codec": "ec25g_s:step=0.29", "bits_per_value": 3.4,
               "delta_ppl_ci_hi": 0.95, "tuned_on": "pydoc"},
              {**base, "corpus": "licenses", "cut": 2, "codec": "ec25g_s:step=0.29", "bits_per_value": 3.7,
               "delta_ppl_ci_hi": 1.4, "tuned_on": "pydoc"}]
    table = codec_rd.bisect_tables(tuning + checks)
    assert "| licenses | 1 | `ec25g_s:step=0.29` (+0.90) | **3.40** | 3.40 / 3.00 |" in table
    assert "+1.40] | 0.0100 | ✗ |" in table
    assert "within the bound at 1 of 2 cuts; within it at ≤ 3.5 bits at 1" in table
    assert "| pydoc | 1 |" in table  # the tuning run's own table comes first
    only = codec_rd.bisect_tables(checks, tuning=tuning)  # --steps-from: the tuning rows are another CSV's
    assert "| pydoc | 1 |" not in only and "(+0.90) | **3.40**" in only
    assert codec_rd.heldout_table(tuning) == ""
    other = [{**r, "codec": "ec25g_s:refs=true:step=0.29"} for r in checks]  # --steps-family: another family
    assert "| licenses | 1 | `ec25g_s:refs=true:step=0.29` (+0.90) | **3.40**" in codec_rd.bisect_tables(other, tuning=tuning)


def test_dedupe_keeps_the_newest_row_of_a_point():
    row = {"corpus": "licenses", "cut": 3, "codec": "ec25g_s:step=0.17", "corpus_digest": "d"}
    rows = codec_rd.dedupe([{**row, "bits_per_value": 6.3}, {**row, "bits_per_value": 4.4},
                            {**row, "bits_per_value": 4.4, "tuned_on": "pydoc"}])
    assert [(r["bits_per_value"], r.get("tuned_on")) for r in rows] == [(4.4, None), (4.4, "pydoc")]
