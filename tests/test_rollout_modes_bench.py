"""``benchmarks/rollout_modes.py``: every mode trains for real (tiny), and the table reports each."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "rollout_modes.py"


def test_each_mode_trains_and_is_reported(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("rollout_modes", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = [
        "rollout.num_slots=8",
        "rollout.window_length=8",
        "rollout.max_response_length=32",
        "data.train_size=64",
        "data.eval_size=8",
        "trainer.total_steps=3",
        "trainer.eval_every=3",
    ]
    modes = ["tppo", "tppo+refill+overlap", "ppo"]
    bench.main([*tiny, "--output-dir", str(tmp_path), "--modes", *modes])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == modes
    for mode in modes:
        assert f"| {mode} |" in out
        assert summary[mode]["steps"] == 3
    assert summary["tppo+refill+overlap"]["wait_rollout_s"] >= 0
    assert summary["tppo+refill+overlap"]["slot_utilization"] > summary["tppo"]["slot_utilization"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert "reproduce: " in out
