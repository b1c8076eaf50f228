"""Sweep jobs with a topology (conf/topology, `splitinfer.topologies`): a relay hop and a U-shape measured
through the in-process pieces `serve`/`generate` use, per-hop bytes through the real codecs, latency
modelled per hop, the report comparing topologies; bad topologies are one line before any weights load."""

from __future__ import annotations

import pytest

from splitinfer.errors import ConfigError

from .conftest import TINY, compose

TOPO = [*TINY, "split.cut=1", "topology.cut_b=3", "metrics.quality=true"]


def _job(tmp_path, *overrides):
    from splitinfer.experiment import run_job

    return run_job(compose([*TOPO, *overrides]), out_dir=tmp_path)


def test_relay_job_meters_each_hop_with_its_codec(tmp_path):
    m = _job(tmp_path, "topology=relay", "codec=fp32", "topology.hop_codec=int8")
    assert m["topology"] == "relay" and m["topology_cuts"] == "1,3" and m["hops"] == 2
    assert m["codec_ran"] == "fp32" and m["hop2_codec"] == "int8"
    hidden = m["hidden_size"]
    # hop 1 raw fp32 (4 B a value + a header), hop 2 int8 (1 B a value + scales): each hop's own codec
    assert 4 * hidden <= m["hop1_up_bytes_per_token_decode"] < 4 * hidden + 200
    assert hidden <= m["hop2_up_bytes_per_token_decode"] < 2 * hidden + 200
    assert m["up_bytes_per_token_decode"] == m["hop1_up_bytes_per_token_decode"]  # what the device's radio sends
    assert m["hop1_down_bytes_per_token_decode"] == 4  # a token id comes back over every hop
    # latency: both hops' links cross twice per token (up and the token back), each half an RTT
    assert m["hop1_link"] == "4g_lte" and m["hop2_link"] == "metro_fiber" and m["latency_source"] == "modelled"
    assert m["tpot_s"] == pytest.approx(sum(m[k] for k in ("model_device_decode_s", "model_edge_decode_s",
                                                           "model_server_decode_s", "model_hop1_decode_s",
                                                           "model_hop2_decode_s", "model_hop2_reply_decode_s",
                                                           "model_hop1_reply_decode_s")))
    assert m["model_hop1_decode_s"] > 0.035 > m["model_hop2_decode_s"]  # 4G's 70 ms RTT vs fibre's 10 ms
    assert (tmp_path / "metrics.json").is_file()


def test_lossless_relay_and_ushape_match_the_unsplit_model(tmp_path):
    for kind in ("relay", "ushape"):
        m = _job(tmp_path / kind, f"topology={kind}", "codec=fp32")
        assert m["exact_match_rate"] == 1.0, kind
        assert abs(m["delta_ppl_pct"]) < 1e-3 and m["kl_mean"] < 1e-8, kind


def test_ushape_job_meters_the_downlink_and_the_device_tail(tmp_path):
    m = _job(tmp_path, "topology=ushape", "codec=int8", "topology.down_codec=fp32")
    hidden = m["hidden_size"]
    assert m["topology"] == "ushape" and m["down_codec"] == "fp32"
    assert 4 * hidden <= m["downlink_bytes_per_token_decode"] < 4 * hidden + 200  # a hidden state comes back
    assert m["up_bytes_per_token_decode"] < 2 * hidden + 200
    assert "hop1_down_bytes_per_token_decode" not in m  # no token id on a U-shape's reply
    assert m["model_device_tail_decode_s"] > 0  # the device runs [3, L) and the head too
    assert m["tpot_s"] == pytest.approx(sum(m[k] for k in ("model_device_decode_s", "model_server_decode_s",
                                                           "model_device_tail_decode_s", "model_hop1_decode_s",
                                                           "model_downlink_decode_s")))


@pytest.mark.parametrize("overrides, says", [
    (["topology=relay", "topology.cut_b=9"], "topology.cut_b=9 with split.cut=1"),
    (["topology=ushape", "topology.cut_b=1"], "topology.cut_b=1 with split.cut=1"),
    (["topology=ushape", "split.cut=0"], "split.cut >= 1"),
    (["topology=relay", "topology.hop_link=carrier_pigeon"], "link 'carrier_pigeon' is not one of"),
    (["topology=relay", "topology.edge_hardware=abacus"], "hardware 'abacus' is not one of"),
    (["topology=ushape", "topology.down_codec=int8_s"], "session codec"),
    (["topology=relay", "defense=gaussian"], "do not run a defense"),
])
def test_bad_topologies_are_one_line_before_the_model_loads(tmp_path, monkeypatch, overrides, says):
    from splitinfer import experiment

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the topology was checked")

    monkeypatch.setattr(experiment.ModelSpec, "load", no_load)
    with pytest.raises(ConfigError) as e:
        experiment.run_job(compose([*TOPO, *overrides]), out_dir=tmp_path)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_report_compares_topologies_on_one_link(tmp_path):
    """The recommendation names the best of each topology; re-costing a relay for another link is refused."""
    from splitinfer.experiment import run_job
    from splitinfer.report.recommend import recommend
    from splitinfer.report.runs import ReportError, load_link, with_latency

    rows = []
    for kind in ("single", "relay", "ushape"):
        extra = [] if kind == "single" else ["topology.cut_b=3"]
        rows.append(run_job(compose([*TINY, "split.cut=1", f"topology={kind}", *extra]), out_dir=tmp_path / kind))
    rec = recommend(rows, "latency")
    text = rec.explanation
    assert "By topology, the lowest per-token latency of each on this link:" in text
    for label in ("cut 1 + int8", "relay 1,3 + int8", "U-shape 1,3 + int8"):
        assert label in text, text
    fastest = min(rows, key=lambda r: r["tpot_s"])
    assert rec.fastest["topology"] == fastest["topology"]
    with pytest.raises(ReportError, match="cannot be re-evaluated"):
        with_latency(rows, load_link("wifi"))
    assert recommend(rows, "latency", link="4g_lte").best["link"] == "4g_lte"  # the jobs' own link: as they ran
    with pytest.raises(ReportError, match="no job of this sweep ran on link 'wifi'"):
        recommend(rows, "latency", link="wifi")
    from splitinfer.report.tables import markdown_table

    table = markdown_table(rows)  # the report's table tells the three apart, with each crossing's bytes
    assert "| topology |" in table and "| relay 1,3 |" in table and "| U-shape 1,3 |" in table
    assert "hop 2 B/tok decode" in table and "downlink B/tok decode" in table
    from splitinfer.report.tables import latency_pivot

    pivot = latency_pivot(rows)  # one line per topology, not the last one's figures under "cut 1"
    assert all(f"| {label} | " in pivot for label in ("cut 1", "relay 1,3", "U-shape 1,3")), pivot


def test_every_topology_option_builds_and_documents_its_command():
    from hydra.utils import instantiate

    from splitinfer.topologies import TopologySpec

    from .conftest import CONF

    for path in sorted((CONF / "topology").glob("*.yaml")):
        assert f"topology={path.stem}" in path.read_text(), path
        spec = instantiate(compose([f"topology={path.stem}"]).topology)
        assert isinstance(spec, TopologySpec) and spec.name == path.stem
    assert compose().topology.kind == "single"  # the default job is the single cut it always was
