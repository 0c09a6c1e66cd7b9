"""The demo's dedup plan: exact -> phash -> semantic on the bundled sample, planted copies per step."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from dask_clip.demo import planted_groups, run_demo, sample_path, score_steps


def test_score_steps_counts_copies_flagged_within_their_group():
    groups = {"a": {"a", "a1", "a2"}, "b": {"b", "b1"}}
    removal = pd.DataFrame(
        {
            "id": ["a1", "a2", "b1", "x"],
            "duplicate_of": ["a", "a1", "a", "b"],  # b1 names a row of another group: not caught
            "step": ["exact", "phash", "semantic", "semantic"],
            "similarity": [1.0, 0.95, 0.99, 0.99],
        }
    )
    assert score_steps(removal, groups) == {"exact": 1, "phash": 1}


@pytest.mark.slow  # the whole demo (319 images embedded, three dedup steps): 1-2 min on 2 busy cores
def test_demo_runs_the_three_step_plan_on_the_session_cluster(client, tmp_path):
    pytest.importorskip("faiss")
    lines: list[str] = []
    out = run_demo(
        tmp_path / "demo",
        random_weights=True,
        connect_options={"scheduler_address": client.scheduler.address},
        echo=lines.append,
    )
    steps = out["steps"]
    assert list(steps) == ["exact", "phash", "semantic"]
    planted = sum(len(m) - 1 for m in planted_groups(pd.read_parquet(sample_path())).values())
    # each step sees only what the earlier ones kept, and together they catch the planted copies
    assert steps["phash"]["rows_in"] == steps["exact"]["rows_in"] - steps["exact"]["duplicates"]
    assert steps["semantic"]["rows_in"] == steps["phash"]["rows_in"] - steps["phash"]["duplicates"]
    assert steps["phash"]["planted_caught"] > 0
    assert sum(s["planted_caught"] for s in steps.values()) >= out["dedup"]["caught"] - 2
    assert sum(s["planted_caught"] for s in steps.values()) <= planted
    assert any("planted copies caught by the plan" in line for line in lines)
    embedded = pd.read_parquet(tmp_path / "demo" / "embeddings", dtype_backend="pyarrow")
    assert embedded["phash"].notna().sum() == 319 - 3  # hashed in the embedding's decode; 3 broken files
    sheet = Image.open(tmp_path / "demo" / "duplicates-steps.png")
    assert sheet.width > 300 and sheet.height > 3 * 160
