"""bench/round_vs_peer.py --pool: repetitions of earlier invocations pooled from their printed rows."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "round_vs_peer.py"


def bench_module():
    spec = importlib.util.spec_from_file_location("round_vs_peer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(what: str, wall: float) -> str:
    stages = {"generate": wall / 4, "label": wall / 8, "train": wall / 2, "eval": wall / 8}
    return json.dumps({"what": what, "stages": stages, "wall_s": wall, "cpu_s": 2 * wall, "peak_rss_mb": 100,
                       "pairs": 24, "win_rate": 0.5})


def test_pooled_repetitions_deal_each_columns_rows_in_order(tmp_path, capsys):
    bench = bench_module()
    one = tmp_path / "one.log"  # a repetition with ours first, and a column the other log lacks
    one.write_text("machine: ...\nrepetition 1 of 2\n" + "\n".join([
        row("ours, gate measured", 60), row("ours, gate cached", 55), row("peer", 110), row("peer, both orders", 130),
        row("peer", 100), row("peer, both orders", 120), row("ours, gate measured", 50), row("ours, gate cached", 45),
    ]) + "\n| stage | peer (median of 2) |\n")
    two = tmp_path / "two.log"
    two.write_text("\n".join([row("peer", 90), row("ours, gate measured", 70), row("ours, gate cached", 65)]) + "\n")
    reps = bench.pooled_repetitions([str(one), str(two)])
    assert "pooled without peer, both orders" in capsys.readouterr().out
    assert [[r["what"] for r in rep] for rep in reps] == [["peer", "ours, gate measured", "ours, gate cached"]] * 3
    assert [[r["wall_s"] for r in rep] for rep in reps] == [[110, 60, 55], [100, 50, 45], [90, 70, 65]]
    medians = [bench.median_row([rep[j] for rep in reps]) for j in range(3)]
    assert [m["wall_s"] for m in medians] == [100, 60, 55]
    bench.report(reps)  # the table of medians, ratios against the peer
    out = capsys.readouterr().out
    assert "| **wall, whole process** | **100.0 s**, 100 MB | **60.0 s** (1.67x), 100 MB |" in out
    assert "ours, gate cached against peer: whole-process ratio per repetition 2.00x, 2.22x, 1.38x" in out


def test_pooling_refuses_unequal_or_missing_logs(tmp_path):
    bench = bench_module()
    short = tmp_path / "short.log"
    short.write_text("\n".join([row("peer", 100), row("ours, gate measured", 50), row("peer", 90)]) + "\n")
    with pytest.raises(SystemExit, match="different numbers of rows"):
        bench.pooled_repetitions([str(short)])
    empty = tmp_path / "empty.log"
    empty.write_text("machine: ...\n")
    with pytest.raises(SystemExit, match="holds no rows"):
        bench.pooled_repetitions([str(empty)])
    with pytest.raises(SystemExit, match="cannot read"):
        bench.pooled_repetitions([str(tmp_path / "absent.log")])
