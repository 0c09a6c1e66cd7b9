"""``dask-clip embed INPUT OUTPUT``: append CLIP embeddings and write Parquet, resumably."""

from __future__ import annotations

import argparse
from typing import Any

from .. import config
from ..heads.options import head_options
from ..image.sources import image_kinds
from ..io.read import input_format_names
from ..io.writers import output_format_names, output_formats
from . import options

__all__ = ["add_parser", "run", "score_heads"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "embed",
        parents=[common],
        help="append CLIP embeddings to images, write Parquet (resumable)",
        description="Embed INPUT's images and write OUTPUT/part-NNNNN.parquet, one file per partition. "
        "Run the same command again to resume: finished files are kept.",
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="Parquet file, folder, glob or fsspec URL (img2dataset output), WebDataset tar shards "
        "('shards/{00000..00099}.tar', 'shards/*.tar'), or a folder of images",
    )
    parser.add_argument("output", metavar="OUTPUT", help="output folder (local or fsspec URL)")
    options.add_model_options(parser, default_model="ViT-L-14", default_pretrained="openai")
    cols = parser.add_argument_group("columns")
    cols.add_argument(
        "--image-column",
        metavar="NAME",
        help="column with the images (default: jpg, image, ... or the only binary column; 'path' for image files)",
    )
    cols.add_argument("--image-kind", choices=image_kinds(), default="auto")
    cols.add_argument(
        "--output-column",
        default="embedding",
        metavar="NAME",
        help="list<float32> embedding column (default: embedding)",
    )
    cols.add_argument(
        "--error-column",
        default="embedding_error",
        metavar="NAME",
        help="why a row has no embedding, else null (default: embedding_error)",
    )
    cols.add_argument("--remove-image-data", action="store_true", help="drop the image column from the output")
    options.add_on_error(cols)
    scores = parser.add_argument_group("captions and scores", "Computed in the same pass, one column each")
    scores.add_argument(
        "--text-column",
        metavar="NAME",
        help="caption column (img2dataset: caption): adds text_embedding, text_embedding_error and clip_score",
    )
    scores.add_argument(
        "--phash",
        action="store_true",
        help="add phash (uint64 perceptual hash, imagehash's bits) from the same decode; "
        "dask-clip dedup --steps phash reads it instead of decoding again",
    )
    for head in head_options():  # each head's options (dask_clip.heads.options)
        if head.add_arguments is not None:
            head.add_arguments(scores)
    reads = parser.add_argument_group("reading images", "Bounds on what one row may cost (docs/robustness.md)")
    reads.add_argument(
        "--max-image-bytes",
        type=options.positive_int,
        default=config.get("read.max-image-bytes"),
        metavar="N",
        help="largest encoded image read, in bytes (default: dask_clip.read.max-image-bytes, %(default)s)",
    )
    reads.add_argument(
        "--max-image-pixels",
        type=options.positive_int,
        default=config.get("read.max-image-pixels"),
        metavar="N",
        help="images with more pixels are refused before decoding (default: dask_clip.read.max-image-pixels, "
        "%(default)s)",
    )
    reads.add_argument(
        "--max-decode-bytes",
        type=options.positive_int,
        default=config.get("read.max-decode-bytes"),
        metavar="N",
        help="decoded RGB bytes one image may take; larger JPEGs are decoded at a reduced scale "
        "(default: dask_clip.read.max-decode-bytes, %(default)s)",
    )
    reads.add_argument(
        "--allow-protocol",
        action="append",
        default=[],
        metavar="PROTO",
        help="also read paths of this fsspec protocol, e.g. https (needs the http extra); "
        f"repeatable (default: dask_clip.read.allowed-protocols, {', '.join(config.get('read.allowed-protocols'))})",
    )
    reads.add_argument(
        "--read-timeout",
        type=float,
        default=config.get("read.timeout"),
        metavar="SECONDS",
        help="seconds one remote read may take (default: dask_clip.read.timeout, %(default)s)",
    )
    part = parser.add_argument_group("partitions and output")
    part.add_argument(
        "--partition-size",
        type=options.positive_int,
        default=256,
        metavar="N",
        help="image files per partition, for a folder of images",
    )
    part.add_argument("--split-row-groups", action="store_true", help="one partition per Parquet row group")
    part.add_argument(
        "--input-format",
        choices=input_format_names(),
        default="auto",
        help="auto: tar shards for .tar inputs, else Parquet, else image files (default: auto)",
    )
    part.add_argument(
        "--split-shards",
        metavar="BYTES",
        help="WebDataset: bytes of tar per partition, e.g. 256MB (default: one partition per shard)",
    )
    part.add_argument(
        "--output-format",
        choices=output_format_names(),
        default="parquet",
        help="; ".join(f"{fmt.name}: {fmt.help}" for fmt in output_formats()) + " (default: parquet; docs/formats.md)",
    )
    part.add_argument(
        "--embedding-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="dtype of the laion format's .npy files (default: float16)",
    )
    part.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    part.add_argument(
        "--retries", type=options.nonnegative_int, default=0, metavar="N", help="retries of a failed partition"
    )
    options.add_progress(parser)
    options.add_cluster_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..embed.embedder import ImageEmbedder
    from ..embed.jobs import prepare_embed, run_embed
    from ..io.writers.parquet import looks_complete, remove_temporaries
    from ..runtime.cluster import connect_early

    embedder = ImageEmbedder(
        **options.weights(args),
        precision=args.precision,
        device=args.device,
        model_inference_batch_size=args.batch_size,
        verbose=args.verbose,
        remove_image_data=args.remove_image_data,
        image_kind=args.image_kind,
        output_column=args.output_column,
        error_column=args.error_column,
        on_error=args.on_error,
        text_column=args.text_column,
        phash_column="phash" if args.phash else None,
        heads=score_heads(args),
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_decode_bytes=args.max_decode_bytes,
        allowed_protocols=(*config.get("read.allowed-protocols"), *(p.lower() for p in args.allow_protocol)),
        read_timeout=args.read_timeout,
        **({"num_gpus_per_worker": args.num_gpus_per_worker} if args.num_gpus_per_worker is not None else {}),
    )
    if embedder.model_dir is not None:
        # A few stat calls: a folder that cannot load (a FIFO as its weights, a config asking for
        # remote code) is refused before a cluster starts for it.
        embedder.spec.resolve_model_dir()
    elif not (args.scheduler_file or args.scheduler_address):
        from ..models.hub import check_hub_model_available

        # The local workers share this machine's hub cache and network: an hf-hub: model that
        # they could not fetch is refused here, before a cluster starts for it.
        check_hub_model_available(embedder.spec)

    def prepare() -> Any:
        return prepare_embed(
            args.input,
            args.output,
            embedder,
            image_column=args.image_column,
            partition_size=args.partition_size,
            split_row_groups=args.split_row_groups,
            overwrite=args.overwrite,
            input_format=args.input_format,
            split_shards=args.split_shards,
            output_format=args.output_format,
            embedding_dtype=args.embedding_dtype,
        )

    def nothing_to_do(job: Any) -> bool:
        if job.todo:
            return False
        remove_temporaries(args.output)  # a killed run's, even when every partition is there
        print(
            f"dask-clip embed: all {job.frame.npartitions} partitions of {args.output} are already written; "
            "nothing to do"
        )
        return True

    job = None
    if not args.overwrite and looks_complete(args.output):  # likely nothing to do: no cluster for that
        job = prepare()
        if nothing_to_do(job):
            return 0
    # The cluster starts (and its workers start loading the model) while this process reads
    # and plans the job: on a short job, the fixed costs overlap instead of adding up.
    with connect_early(preload=embedder.spec, **options.cluster_options(args)) as wait_for_client:
        if job is None:
            job = prepare()
            if nothing_to_do(job):
                return 0
        total = job.frame.npartitions
        todo = f"{len(job.todo)} of {total} partitions to write"
        options.say(todo + ("" if len(job.todo) == total else " (resuming)"))
        client = wait_for_client()
        options.say(f"cluster: {options.describe(client, args)}")
        summary = run_embed(
            job, overwrite=args.overwrite, client=client, progress=options.progress(args), retries=args.retries
        )
    print(
        f"dask-clip embed: wrote {summary.written} partitions ({summary.skipped} already there), "
        f"{summary.rows} images, {summary.counts.get('errors', 0)} errors"
        + (
            f" ({summary.counts['read_errors']} reported by the tar reader)"
            if summary.counts.get("read_errors")
            else ""
        )
        + f", {summary.seconds:.1f}s, "
        f"{summary.rows_per_second:.1f} images/s -> {args.output}"
    )
    return 0


def score_heads(args: argparse.Namespace) -> list:
    """The heads that the heads' options ask for (``--aesthetic-model``, ``--nsfw-model``,
    ``--labels``, ...), in the heads' order."""
    return [h for head in head_options() if head.heads is not None for h in head.heads(args)]
