"""Output formats besides Parquet (:mod:`dask_clip.writer`): one module per format.

Each format module implements :class:`~dask_clip.io.writers.partitioned.PartitionFormat`;
:func:`~dask_clip.io.writers.partitioned.write_format` runs it with the same resume, manifest
and input checks as the Parquet writer.
"""
