"""Zero-shot classification on the command line: ``dask-clip embed --labels`` and
``dask-clip filter --keep-label`` (the heads are :mod:`dask_clip.heads.zero_shot`)."""

from __future__ import annotations

import argparse
from typing import Any

from .options import FilterRule, HeadOptions, label_list


def _add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--labels",
        metavar="FILE",
        help="zero-shot label names, one per line: adds zero_shot_label and zero_shot_probability",
    )
    group.add_argument(
        "--label-templates",
        metavar="FILE",
        help="prompt templates for --labels, one per line with {} for the label (default: 'a photo of a {}.')",
    )
    group.add_argument(
        "--label-probabilities",
        action="store_true",
        help="also add zero_shot_probabilities, every label's probability (list<float32>)",
    )


def _heads(args: argparse.Namespace) -> list[Any]:
    from .zero_shot import DEFAULT_TEMPLATES, read_labels, zero_shot_heads

    if args.label_templates and not args.labels:
        raise ValueError("--label-templates needs --labels FILE")
    if args.label_probabilities and not args.labels:
        raise ValueError("--label-probabilities needs --labels FILE")
    if not args.labels:
        return []
    templates = read_labels(args.label_templates) if args.label_templates else DEFAULT_TEMPLATES
    return list(
        zero_shot_heads(
            read_labels(args.labels),
            templates,
            probabilities_column="zero_shot_probabilities" if args.label_probabilities else None,
        )
    )


CLI = HeadOptions(
    "zero_shot",
    priority=40,
    add_arguments=_add_arguments,
    heads=_heads,
    rule=FilterRule(
        "labels",
        "zero_shot_label",
        "label_column",
        "in",
        "keep rows whose zero_shot_label is LABEL (repeat for several)",
        metavar="LABEL",
        check=label_list,
        flag="--keep-label",
    ),
)
