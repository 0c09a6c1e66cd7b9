"""From rows to embeddings: chunking, decoding ahead of the model, row errors, heads.

One partition's rows go through the model in chunks of a few hundred: a thread decodes the
next chunk while the model embeds the current one (Pillow and nvJPEG release the GIL), so a
partition's decoded pixels in memory are bounded by two chunks. A row that cannot be decoded
gets a reason instead of an embedding (or raises :class:`~dask_clip.errors.ImageDecodeError`
with ``on_error="raise"``); every other row keeps its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .decode import Decoder
from .errors import ImageDecodeError
from .heads import HeadFunction, HeadInputs
from .infer import encode_images
from .models import LoadedModel
from .sources import ImageSource

__all__ = ["MIN_ROWS_PER_CHUNK", "RowsResult", "embed_rows"]

# Rows decoded ahead of the model at once: bounds a partition's decoded pixels in memory.
MIN_ROWS_PER_CHUNK = 256


@dataclass
class RowsResult:
    """What :func:`embed_rows` returns for N rows, M of which have an embedding.

    Attributes
    ----------
    embeddings : torch.Tensor
        float32 (M, D) on the model's device, the rows that have an image, in order.
    valid : numpy.ndarray
        bool (N,), True where a row has an embedding.
    errors : list of str or None
        N entries: why a row has no embedding, else None.
    heads : dict of str to list
        Per head column, the values of the M valid rows, one entry per forward batch (torch
        tensors, or lists of strings); :meth:`head_values` joins them.
    """

    embeddings: torch.Tensor
    valid: np.ndarray
    errors: list[str | None]
    heads: dict[str, list[Any]] = field(default_factory=dict)

    def head_values(self, column: str) -> Any:
        """One head's values for the M valid rows: a tensor (M, ...) or a list of M strings."""
        parts = self.heads.get(column, [])
        if parts and isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return [value for part in parts for value in part]


def _as_tensor(pixels: object) -> torch.Tensor:
    """uint8 (H, W, 3) pixels as a tensor without copying where the source allows."""
    if isinstance(pixels, torch.Tensor):
        return pixels
    array = np.asarray(pixels)
    if not array.flags.writeable:  # torch refuses to alias read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def embed_rows(
    rows: Sequence[object],
    source: ImageSource,
    *,
    model: LoadedModel,
    decoder: Decoder,
    batch_size: int,
    normalize: bool = True,
    on_error: str = "null",
    index: Sequence[object] | None = None,
    heads: dict[str, HeadFunction] | None = None,
    max_pixels: int | None = None,
    chunk_rows: int | None = None,
) -> RowsResult:
    """Decode and embed one partition's rows; run the heads on the same batches.

    Parameters
    ----------
    rows
        One object per row, as ``source.rows`` gives them (bytes, paths, pixels or None).
    source
        The image source that decodes them.
    model
        The worker's loaded model.
    decoder
        Pillow, or nvJPEG with a Pillow fallback.
    batch_size
        Images per forward pass.
    normalize
        L2-normalise the returned embeddings (heads always see unit-length embeddings).
    on_error
        ``"null"``: a bad row gets a reason; ``"raise"``: raise for the first bad row.
    index
        The rows' index labels, named by :class:`~dask_clip.errors.ImageDecodeError`.
    heads
        Output column -> loaded head.
    max_pixels
        Decompression-bomb limit.
    chunk_rows
        Rows decoded at once; default: the largest multiple of ``batch_size`` up to 256.

    Returns
    -------
    RowsResult
    """
    n = len(rows)
    heads = heads or {}
    result = RowsResult(
        embeddings=torch.zeros((0, model.embed_dim), dtype=torch.float32, device=model.device),
        valid=np.zeros(n, dtype=bool),
        errors=[None] * n,
        heads={column: [] for column in heads},
    )
    if n == 0:
        return result
    chunk = chunk_rows or batch_size * max(1, MIN_ROWS_PER_CHUNK // batch_size)
    parts: list[torch.Tensor] = []

    def decode(start: int) -> list:
        return source.decode(rows[start : start + chunk], decoder, max_pixels=max_pixels)

    # Decode the next chunk in a thread while the model runs (Pillow releases the GIL).
    with ThreadPoolExecutor(1, thread_name_prefix="dask-clip-decode") as pool:
        pending = pool.submit(decode, 0)
        for start in range(0, n, chunk):
            decoded = pending.result()
            if start + chunk < n:
                pending = pool.submit(decode, start + chunk)
            images = []
            for offset, (pixels, reason) in enumerate(decoded):
                row = start + offset
                if pixels is None:
                    if on_error == "raise":
                        raise ImageDecodeError(index[row] if index is not None else row, reason or "unknown")
                    result.errors[row] = reason
                else:
                    result.valid[row] = True
                    images.append(_as_tensor(pixels))
            if not images:
                continue
            features = encode_images(model, images, batch_size=batch_size, normalize=False)
            unit = torch.nn.functional.normalize(features, dim=-1)
            if heads:
                inputs = HeadInputs(image=unit)
                with torch.inference_mode():
                    for column, head in heads.items():
                        result.heads[column].append(head(inputs))
            parts.append(unit if normalize else features)
    if parts:
        result.embeddings = torch.cat(parts)
    return result
