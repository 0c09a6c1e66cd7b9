"""References for tests: open_clip's own pipeline, the parity measure, a reference head,
clustered embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..heads import Head, HeadFunction, HeadInputs

if TYPE_CHECKING:
    from ..models.loaded import LoadedModel

__all__ = ["ProjectionHead", "clustered_embeddings", "embedding_array", "parity", "reference_embeddings"]


def reference_embeddings(model_dir: str, images: list[bytes]) -> np.ndarray:
    """open_clip's own pipeline, the parity reference (docs/design.md): PIL decode ->
    ``convert("RGB")`` -> the model's preprocess transform -> ``encode_image`` -> L2-normalise.

    Returns
    -------
    numpy.ndarray
        float32 (N, D).
    """
    import io

    from PIL import Image

    from ..models.open_clip_import import open_clip_module

    open_clip = open_clip_module()

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        return torch.nn.functional.normalize(model.encode_image(batch), dim=-1).numpy()


def parity(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: ``||e - e_ref|| / median ||e_ref_i - e_ref_j||`` over pairs of different images.

    Parameters
    ----------
    embeddings, reference
        float32 (N, D), N >= 2, row i of each from the same image.

    Returns
    -------
    numpy.ndarray
        float (N,).
    """
    import numpy as np

    pairs = [
        np.linalg.norm(reference[i] - reference[j]) for i in range(len(reference)) for j in range(i + 1, len(reference))
    ]
    return np.linalg.norm(embeddings - reference, axis=1) / np.median(pairs)


@dataclass(frozen=True)
class ProjectionHead(Head):
    """A head for tests and examples: each embedding's dot product with a seeded random vector.

    Proves the heads seam end to end (configuration in the graph, loaded once per worker on the
    model's device, one float32 column) with an answer a test can compute from the embedding
    column itself: ``embeddings @ ProjectionHead.weights(D)``.

    Parameters
    ----------
    column
        Output column.
    seed
        Seed of the random direction.
    dim
        The embedding width it accepts (None: any); a mismatch is refused on the client.
    """

    column: str = "projection"
    seed: int = 0
    dim: int | None = None

    def input_dim(self) -> int | None:
        return self.dim

    def weights(self, dim: int) -> np.ndarray:
        """The direction: float32 (dim,)."""
        return np.random.default_rng(self.seed).standard_normal(dim).astype(np.float32)

    def load(self, model: LoadedModel) -> HeadFunction:
        direction = torch.from_numpy(self.weights(model.embed_dim)).to(model.device)

        def project(inputs: HeadInputs) -> torch.Tensor:
            return inputs.image @ direction

        return project


def clustered_embeddings(
    n: int,
    dim: int = 512,
    *,
    clusters: int = 1000,
    subspace: int = 16,
    spread: float = 1.0,
    noise: float = 0.7,
    seed: int = 0,
    chunk: int = 65536,
) -> np.ndarray:
    """Synthetic unit-length embeddings with the structure that makes kNN search non-trivial.

    Each row is ``normalize(c_k + B_k z + e)``: a centre ``c_k`` (norm ~1) of one of
    ``clusters`` clusters whose sizes follow a heavy-tailed (Pareto) law, a random point of the
    cluster's own ``subspace``-dimensional subspace ``B_k z`` (norm ~``spread``), and isotropic
    noise ``e`` (norm ~``noise``). Rows are in random cluster order.

    Parameters
    ----------
    n, dim
        Shape of the output.
    clusters, subspace, spread, noise
        The structure above.
    seed
        Everything is drawn from ``numpy.random.default_rng(seed)``.
    chunk
        Rows generated at a time (bounds temporary memory).

    Returns
    -------
    numpy.ndarray
        float32 (n, dim), unit rows.
    """
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((clusters, dim)) / np.sqrt(dim)).astype(np.float32)
    bases = (rng.standard_normal((clusters, subspace, dim)) / np.sqrt(dim)).astype(np.float32)
    weights = rng.pareto(1.0, clusters) + 1.0
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        x = centres[lab] + rng.standard_normal((len(lab), dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        z = rng.standard_normal((len(lab), subspace), dtype=np.float32) * np.float32(spread / np.sqrt(subspace))
        order = np.argsort(lab, kind="stable")
        for group in np.split(order, np.flatnonzero(np.diff(lab[order])) + 1):
            if len(group):
                x[group] += z[group] @ bases[lab[group[0]]]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + len(lab)] = x
    return out


def embedding_array(embeddings: np.ndarray, valid: np.ndarray) -> object:
    """A pandas ``list<float32>`` column (ExtensionArray) of the valid rows' float32 (M, D)
    embeddings, null elsewhere: what an embedder writes, for tests that start from embeddings."""
    import pandas as pd

    from ..backends.arrow import list_float32_array

    return pd.arrays.ArrowExtensionArray(
        list_float32_array(np.asarray(embeddings, np.float32), np.asarray(valid, bool))
    )
