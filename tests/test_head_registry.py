"""Heads as a registry: a head usable from ``dask-clip embed`` and ``dask-clip filter`` is one
module (its Head class and its ``CLI = HeadOptions(...)``): the embed options, the heads they
ask for, the filter rule, its flags and its column come from the module."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from dask_clip import ImageEmbedder, heads
from dask_clip.cli import build_parser
from dask_clip.cli.embed import score_heads
from dask_clip.columns import BINARY_DTYPE, embeddings_to_numpy
from dask_clip.filter import filter_frame, filter_rules
from dask_clip.heads import options as registry
from dask_clip.registry import ModuleRegistry

PEAK_HEAD = textwrap.dedent(
    """
    from dataclasses import dataclass

    from dask_clip.heads.base import Head
    from dask_clip.heads.options import FilterRule, HeadOptions


    @dataclass(frozen=True)
    class PeakHead(Head):
        column: str = "peak_score"

        def load(self, model):
            return lambda inputs: inputs.image.max(dim=1).values


    CLI = HeadOptions(
        "peak",
        priority=35,
        add_arguments=lambda group: group.add_argument("--peak", action="store_true", help="adds peak_score"),
        heads=lambda args: [PeakHead()] if args.peak else [],
        rule=FilterRule("min_peak", "peak_score", "peak_column", ">=", "keep peak_score >= X"),
    )
    """
)


def _subparser(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


def test_the_shipped_heads_declare_their_options_and_rules():
    assert [h.name for h in registry.head_options()] == ["aesthetic", "nsfw", "clip_score", "zero_shot"]
    assert [r.cli_flag for r in registry.filter_rules_of()] == [
        "--min-aesthetic",
        "--max-nsfw",
        "--min-clip-score",
        "--keep-label",
    ]
    with pytest.raises(
        ValueError, match=r"give at least one threshold: min_aesthetic, max_nsfw, min_clip_score or labels"
    ):
        filter_rules()
    with pytest.raises(TypeError, match=r"unexpected filter arguments \['min_peak'\]"):
        filter_rules(min_peak=1)
    with pytest.raises(ValueError, match=r"max_nsfw=2 must be a probability"):
        filter_rules(max_nsfw=2)


def test_a_new_head_is_one_module(tmp_path, monkeypatch, model_dir, photo_jpegs):
    package = tmp_path / "extra"
    package.mkdir()
    (package / "peak.py").write_text(PEAK_HEAD)
    monkeypatch.setattr(heads, "__path__", [*heads.__path__, str(package)])
    monkeypatch.setattr(
        registry, "_OPTIONS", ModuleRegistry("dask_clip.heads", "CLI", registry.HeadOptions, skip=("modules", "cache"))
    )
    assert [h.name for h in registry.head_options()] == ["aesthetic", "nsfw", "clip_score", "peak", "zero_shot"]

    # embed: its option, and the head it asks for, run by the embedder
    args = _subparser("embed").parse_args(["in", "out", "--peak", "--model-dir", model_dir])
    chosen = score_heads(args)
    assert [type(h).__name__ for h in chosen] == ["PeakHead"]
    frame = pd.DataFrame({"jpg": pd.Series([*photo_jpegs[:4], b"bad"], dtype=BINARY_DTYPE)})
    out = ImageEmbedder(model_dir=model_dir, device="cpu", image_column="jpg", heads=chosen).embed_partition(frame)
    vectors = embeddings_to_numpy(out["embedding"])
    expected = np.nanmax(vectors[:4], axis=1)
    np.testing.assert_allclose(out["peak_score"][:4].to_numpy(dtype=np.float32), expected, rtol=1e-6)
    assert pd.isna(out["peak_score"].iloc[4])  # the failed row has no score

    # filter: its flag and column flag, and its rule
    parsed = _subparser("filter").parse_args(["in", "out", "--min-peak", "0.1", "--peak-column", "p"])
    assert (parsed.min_peak, parsed.peak_column) == (0.1, "p")
    threshold = float(np.median(expected))
    rules = filter_rules(min_peak=threshold)
    assert [r.name for r in rules] == [f"peak_score >= {threshold:g}"]
    import dask.dataframe as dd

    scored = pd.DataFrame({"key": list("abcde"), "peak_score": [*expected, np.nan]})
    kept = filter_frame(dd.from_pandas(scored, npartitions=2), min_peak=threshold).compute(scheduler="sync")
    assert kept["key"].tolist() == [k for k, v in zip("abcd", expected, strict=True) if v >= threshold]
