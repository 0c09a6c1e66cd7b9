"""The demo's dedup plan: exact -> phash -> semantic on the bundled sample, planted copies per step."""

from __future__ import annotations

import pandas as pd

from dask_clip.demo import score_steps


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


# The whole demo through its console script, with each step's line checked: tests/test_cli.py
