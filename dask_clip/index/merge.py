"""Step 4: merge the shards into one index, in memory or with on-disk inverted lists.

In memory, the trained index takes each shard's vectors in partition order
(``merge_from``). On disk, faiss' ``OnDiskInvertedLists`` gathers the shards' lists into one
``index.ivfdata`` file that the search memory-maps (``faiss.contrib.ondisk.merge_ondisk``),
so the merged index never has to fit in memory; it is read back with
``IO_FLAG_ONDISK_SAME_DIR``, so the folder can move.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import layout
from .train import import_faiss

__all__ = ["merge_shards", "read_index"]

logger = logging.getLogger(__name__)


def merge_shards(build_dir: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], on_disk: bool) -> Path:
    """Merge ``shard_paths`` (in order) into ``build_dir/index.faiss``.

    Parameters
    ----------
    build_dir
        The build folder holding ``trained.faiss``.
    shard_paths
        Shard files written by :func:`~dask_clip.index.add.add_partition`, in partition order.
    on_disk
        Write the inverted lists to ``build_dir/index.ivfdata`` (IVF indexes only).

    Returns
    -------
    Path
        The merged index file.
    """
    faiss = import_faiss()
    root = Path(build_dir)
    out = root / layout.INDEX_FILE
    trained = faiss.read_index(str(root / layout.TRAINED_FILE))
    if on_disk:
        from faiss.contrib.ondisk import merge_ondisk

        ivfdata = root / layout.IVFDATA_FILE
        ivfdata.unlink(missing_ok=True)
        merge_ondisk(trained, [str(p) for p in shard_paths], str(ivfdata))
        faiss.write_index(trained, str(out))
        return out
    ivf = faiss.try_extract_index_ivf(trained)
    for path in shard_paths:
        shard = faiss.read_index(str(path))
        if ivf is not None:
            ivf.merge_from(faiss.extract_index_ivf(shard), 0)
            trained.ntotal = ivf.ntotal  # an IndexPreTransform/IDMap wrapper keeps its own count
        else:
            trained.merge_from(shard)
        del shard
    faiss.write_index(trained, str(out))
    logger.info("merged %d shards: %d vectors", len(shard_paths), trained.ntotal)
    return out


def read_index(path: str | os.PathLike, on_disk: bool, mmap: bool = False) -> Any:
    """Read a merged index; on-disk lists are found beside the index file."""
    faiss = import_faiss()
    flags = 0
    if on_disk:
        flags |= faiss.IO_FLAG_ONDISK_SAME_DIR
    elif mmap:
        flags |= faiss.IO_FLAG_MMAP
    return faiss.read_index(str(path), flags)
