"""Zero-shot labels: the best of a list of label names for each image, as open_clip classifies.

open_clip's zero-shot recipe (``open_clip.zero_shot_classifier.build_zero_shot_classifier``):
each label is written into every prompt template, the texts are embedded and L2-normalised,
averaged per label and normalised again; an image's probabilities are
``softmax(logit_scale.exp() * image @ classes.T)`` over the labels, with the model's own learnt
``logit_scale`` (100 for OpenAI's CLIP). A model trained with SigLIP's sigmoid loss (one with a
learnt ``logit_bias``: open_clip's SigLIP towers, transformers' ``SiglipModel``) scores each label
on its own, as its own ``logits_per_image`` do: ``sigmoid(logit_scale.exp() * image @ classes.T +
logit_bias)``; those probabilities do not sum to 1 and several labels (or none) may be likely.
The class embeddings are computed once per worker process with the same model's text tower, and
shared by the heads of one label set.

A head adds one column, so one label set gives up to three heads (:func:`zero_shot_heads`): the
top label (string), its probability (float32), and all probabilities (``list<float32>``, in the
order of ``labels``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..columns import FLOAT32, LIST_FLOAT32, STRING
from ..runtime import caches
from .base import Head

if TYPE_CHECKING:
    import torch

    from ..models.loaded import LoadedModel
    from .base import HeadFunction, HeadInputs

__all__ = [
    "DEFAULT_TEMPLATES",
    "ZeroShotLabel",
    "ZeroShotProbabilities",
    "ZeroShotProbability",
    "class_embeddings",
    "logit_bias",
    "read_labels",
    "zero_shot_heads",
]

#: The one prompt of CLIP's paper and open_clip's README. More prompts give better labels, e.g.
#: open_clip's 80 ImageNet ones: ``[t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]``.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

_CACHE: dict[
    tuple[int, tuple[str, ...], tuple[str, ...]], tuple[object, torch.Tensor, torch.Tensor, torch.Tensor | None]
] = {}
_LOCK = threading.Lock()


def _clear_classes() -> None:
    with _LOCK:
        _CACHE.clear()


caches.register("zero-shot classes", _clear_classes)


def logit_bias(model: LoadedModel) -> torch.Tensor | None:
    """The model's learnt ``logit_bias`` (a scalar on its device) when it was trained with SigLIP's
    sigmoid loss, None for a softmax (CLIP) model.

    open_clip's ``CLIP``/``CustomTextCLIP`` hold ``logit_bias`` (None unless ``init_logit_bias`` was
    set: the SigLIP configs); the transformers wrappers expose the same attribute.
    """
    import torch

    bias = getattr(model.model, "logit_bias", None)
    if bias is None:
        return None
    with torch.inference_mode():
        return bias.detach().float().reshape(()).to(model.device)


def class_embeddings(
    model: LoadedModel, labels: Sequence[str], templates: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier of a label set for a loaded model, computed once per process.

    Parameters
    ----------
    model
        The worker's loaded model.
    labels
        K label names.
    templates
        T prompt templates, each with one ``{}``.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        float32 (K, D) unit class embeddings and the scalar ``logit_scale.exp()``, on the
        model's device.
    """
    classes, scale, _ = _classifier(model, labels, templates)
    return classes, scale


def _classifier(
    model: LoadedModel, labels: Sequence[str], templates: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`class_embeddings` and the model's :func:`logit_bias`, cached together."""
    import torch

    from ..embed.text import encode_texts

    key = (id(model), tuple(labels), tuple(templates))
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is model:
        return cached[1], cached[2], cached[3]
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached[0] is model:
            return cached[1], cached[2], cached[3]
        texts = [template.format(label) for label in labels for template in templates]
        features = encode_texts(model, texts, batch_size=256)
        per_label = torch.nn.functional.normalize(features, dim=-1).view(len(labels), len(templates), -1)
        classes = torch.nn.functional.normalize(per_label.mean(dim=1), dim=-1)
        with torch.inference_mode():
            scale = model.model.logit_scale.detach().float().exp().to(model.device)
        bias = logit_bias(model)
        _CACHE[key] = (model, classes, scale, bias)
        return classes, scale, bias


def read_labels(path: str) -> list[str]:
    """Label names from a text file, one per line (blank lines and ``#`` comments skipped)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


@dataclass(frozen=True)
class _ZeroShot(Head):
    """What the three zero-shot heads share: the label set and its prompts."""

    output: ClassVar[str] = "label"

    labels: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    column: str = "zero_shot_label"

    def __post_init__(self) -> None:
        # Tuples: hashable (workers cache loaded heads by value) and cheap to pickle.
        for name in ("labels", "templates"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{type(self).__name__}: {name} must be a list of strings, not one string")
            object.__setattr__(self, name, tuple(value))

    def validate(self) -> None:
        if not self.labels:
            raise ValueError(f"{type(self).__name__}: give at least one label")
        bad = [label for label in self.labels if not isinstance(label, str) or not label.strip()]
        if bad:
            raise ValueError(f"{type(self).__name__}: labels must be non-empty strings, got {bad[:5]}")
        twice = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if twice:
            raise ValueError(f"{type(self).__name__}: labels {twice} are given twice")
        if not self.templates:
            raise ValueError(f"{type(self).__name__}: give at least one template, e.g. {DEFAULT_TEMPLATES[0]!r}")
        for template in self.templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(
                    f"{type(self).__name__}: template {template!r} must hold exactly one '{{}}' for the label"
                )

    def load(self, model: LoadedModel) -> HeadFunction:
        import torch

        classes, scale, bias = _classifier(model, self.labels, self.templates)
        labels, output = self.labels, self.output

        def classify(inputs: HeadInputs) -> torch.Tensor | list[str]:
            logits = scale * (inputs.image @ classes.T)
            # SigLIP: each label on its own (sigmoid with the learnt bias); CLIP: softmax over labels
            probabilities = torch.softmax(logits, dim=-1) if bias is None else torch.sigmoid(logits + bias)
            if output == "probabilities":
                return probabilities
            best, where = probabilities.max(dim=-1)
            return best if output == "probability" else [labels[i] for i in where.tolist()]

        return classify


@dataclass(frozen=True)
class ZeroShotLabel(_ZeroShot):
    """The most probable of ``labels`` for each image (string column).

    Parameters
    ----------
    labels
        Label names, e.g. ``["cat", "dog", "car"]``.
    templates
        Prompt templates with one ``{}`` each (default ``("a photo of a {}.",)``).
    column
        Output column.
    """

    kind: ClassVar[str] = STRING
    output: ClassVar[str] = "label"

    column: str = "zero_shot_label"


@dataclass(frozen=True)
class ZeroShotProbability(_ZeroShot):
    """The probability of the most probable label (float32 column); see :class:`ZeroShotLabel`."""

    kind: ClassVar[str] = FLOAT32
    output: ClassVar[str] = "probability"

    column: str = "zero_shot_probability"


@dataclass(frozen=True)
class ZeroShotProbabilities(_ZeroShot):
    """Every label's probability, in the order of ``labels`` (``list<float32>`` column; rows sum
    to 1 for a CLIP model, each label independent for a SigLIP one); see :class:`ZeroShotLabel`."""

    kind: ClassVar[str] = LIST_FLOAT32
    output: ClassVar[str] = "probabilities"

    column: str = "zero_shot_probabilities"


def zero_shot_heads(
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    label_column: str | None = "zero_shot_label",
    probability_column: str | None = "zero_shot_probability",
    probabilities_column: str | None = None,
) -> list[Head]:
    """The heads of one label set, sharing one classifier per worker: pass them to ``heads=``.

    Parameters
    ----------
    labels
        Label names.
    templates
        Prompt templates with one ``{}`` each.
    label_column, probability_column, probabilities_column
        Output columns (None: not added): the top label, its probability, all probabilities.

    Returns
    -------
    list of Head
    """
    labels, templates = tuple(labels), tuple(templates)
    heads: list[Head] = []
    if label_column is not None:
        heads.append(ZeroShotLabel(labels, templates, column=label_column))
    if probability_column is not None:
        heads.append(ZeroShotProbability(labels, templates, column=probability_column))
    if probabilities_column is not None:
        heads.append(ZeroShotProbabilities(labels, templates, column=probabilities_column))
    if not heads:
        raise ValueError("zero_shot_heads: every output column is None; name at least one")
    return heads
