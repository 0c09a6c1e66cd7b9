"""Steps and apply: the chain is checked on the client, runs in one task per partition, gives
what the presets give alone, and times each step."""

from __future__ import annotations

from dataclasses import dataclass

import dask.dataframe as dd
import numpy as np
import pytest

from dask_clip import ImageEmbedder, TextEmbedder
from dask_clip.columns import embeddings_to_numpy
from dask_clip.heads import zero_shot_heads
from dask_clip.steps import IMAGE, Step, TextEmbedding, apply, run_steps


@pytest.fixture(scope="module")
def embedders(text_model_dir):
    image = ImageEmbedder(
        model_dir=text_model_dir, device="cpu", heads=tuple(zero_shot_heads(["cat", "rocket", "coffee"]))
    )
    text = TextEmbedder(
        model_dir=text_model_dir, device="cpu", output_column="caption_embedding", error_column="caption_error"
    )
    return image, text


def test_steps_declare_their_columns(embedders):
    image, text = embedders
    step = image.as_step()
    assert isinstance(step, Step) and isinstance(text.as_step(), Step)
    assert step.inputs() == [("image", IMAGE)]
    assert [n for n, _ in step.outputs()] == [
        "embedding",
        "embedding_error",
        "zero_shot_label",
        "zero_shot_probability",
    ]
    assert text.as_step().inputs() == [("caption", "string")]
    assert step.fingerprint() == image.fingerprint()


def test_apply_equals_the_presets_run_one_after_the_other(embedders, captioned_frame):
    image, text = embedders
    ddf = dd.from_pandas(captioned_frame, npartitions=3)
    chained = apply(ddf, [image.as_step(), text.as_step()])
    alone = text(image(ddf))
    assert list(chained.columns) == list(alone.columns) and chained.npartitions == 3
    assert chained._meta.dtypes.to_dict() == alone._meta.dtypes.to_dict()
    got, want = chained.compute(scheduler="sync"), alone.compute(scheduler="sync")
    assert got.index.tolist() == want.index.tolist() == captioned_frame.index.tolist()
    for column in ("embedding", "caption_embedding"):
        np.testing.assert_array_equal(
            np.nan_to_num(embeddings_to_numpy(got[column])), np.nan_to_num(embeddings_to_numpy(want[column]))
        )
    for column in ("embedding_error", "caption_error", "zero_shot_label"):
        assert got[column].tolist() == want[column].tolist()
    assert len({k for k in chained.dask if "dask_clip_steps" in str(k)}) >= 3  # one task per partition


@dataclass(frozen=True)
class CaptionLength:
    """A step of a few lines: the caption's length in characters (null for a null caption)."""

    column: str = "caption_length"
    name: str = "caption_length"

    def inputs(self):
        return [("caption", "string")]

    def outputs(self):
        return [(self.column, "float32")]

    def validate(self, meta):
        pass

    def fingerprint(self):
        return {"column": self.column}

    def __call__(self, partition):
        out = partition.copy()
        out[self.column] = partition["caption"].str.len().astype("float32[pyarrow]")
        return out


def test_apply_refuses_clashes_and_missing_inputs_on_the_client(embedders, captioned_frame):
    image, text = embedders
    ddf = dd.from_pandas(captioned_frame, npartitions=2)
    with pytest.raises(ValueError, match=r"step 'caption_length' writes \['key'\], which already exist"):
        apply(ddf, [CaptionLength(column="key")])
    with pytest.raises(ValueError, match=r"step 'caption_length' writes \['caption_length'\], which already exist"):
        apply(ddf, [CaptionLength(), CaptionLength()])
    with pytest.raises(ValueError, match=r"step 'caption_length' reads \['caption'\], which the frame does not have"):
        apply(ddf.drop(columns=["caption"]), [CaptionLength()])
    # the presets' own checks come first, with their own messages
    same_output = TextEmbedding(TextEmbedder(model_dir=text.model_dir, output_column="embedding"))
    with pytest.raises(ValueError, match=r"output column 'embedding' already exists; pass another name"):
        apply(ddf, [image.as_step(), same_output])
    with pytest.raises(ValueError, match=r"text_column='caption' not in the columns"):
        apply(ddf.drop(columns=["caption"]), [text.as_step()])
    with pytest.raises(ValueError, match="at least one step"):
        apply(ddf, [])


def test_a_plain_step_runs_beside_the_embedders(embedders, captioned_frame):
    image, _ = embedders
    ddf = dd.from_pandas(captioned_frame, npartitions=2)
    out = apply(ddf, [CaptionLength(), image.as_step()]).compute(scheduler="sync")
    assert out["caption_length"].tolist()[:4] == [float(len(c)) for c in captioned_frame["caption"][:4]]
    assert out["embedding_error"].notna().tolist() == [False] * 5 + [True, True]


def test_each_step_is_timed(embedders, captioned_frame):
    from distributed.metrics import context_meter

    image, text = embedders
    seen: list[tuple] = []
    with context_meter.add_callback(lambda label, value, unit: seen.append((label, value, unit))):
        out = run_steps(captioned_frame, [image.as_step(), text.as_step()])
    assert len(out) == len(captioned_frame)
    timed = [(label, unit) for label, value, unit in seen if label[0] == "dask_clip" and value >= 0]
    assert timed == [(("dask_clip", "image_embedding"), "seconds"), (("dask_clip", "text_embedding"), "seconds")]
