"""The CLIP score's filter rule: ``clip_score``, the image-caption cosine of
``ImageEmbedder(text_column=...)`` (``dask-clip embed --text-column``; not a head of its own:
it needs the caption's embedding, which the embedder computes)."""

from __future__ import annotations

from .options import FilterRule, HeadOptions

CLI = HeadOptions(
    "clip_score",
    priority=30,
    rule=FilterRule(
        "min_clip_score",
        "clip_score",
        "clip_score_column",
        ">=",
        "keep clip_score >= C (image-caption cosine; LAION-5B kept >= 0.28 with ViT-B/32)",
        metavar="C",
    ),
)
