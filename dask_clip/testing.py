"""Tiny, seeded, randomly initialised open_clip models in the ``local-dir:`` layout.

Used by the tests and the offline demo: they load through exactly the path real weights take
(``model_dir=``), without a model hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .heads import Head, HeadFunction, HeadInputs

if TYPE_CHECKING:
    from .models.loaded import LoadedModel

__all__ = [
    "CAPTIONS",
    "TINY_MODEL_CFG",
    "TINY_TEXT_MODEL_CFG",
    "TRANSFORMERS_CONFIGS",
    "ProjectionHead",
    "clustered_embeddings",
    "embedding_array",
    "encode_image",
    "odd_images",
    "parity",
    "photo_crops",
    "png_bomb",
    "reference_embeddings",
    "solid_png",
    "write_aesthetic_weights",
    "write_model_dir",
    "write_nsfw_weights",
    "write_transformers_model_dir",
]

TINY_MODEL_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
#: :data:`TINY_MODEL_CFG` with the vocabulary of open_clip's tokenizer (49,408 tokens), so that its
#: text tower takes real captions. Its image tower is TINY_MODEL_CFG's, weight for weight (the
#: seeded initialisation draws the image tower's weights first).
TINY_TEXT_MODEL_CFG: dict = {**TINY_MODEL_CFG, "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "vocab_size": 49408}}


def write_model_dir(
    folder: str | Path,
    *,
    model_cfg: dict | None = None,
    preprocess_cfg: dict | None = None,
    seed: int = 0,
    weights: str | None = "safetensors",
) -> Path:
    """Write a seeded random open_clip model as ``open_clip_config.json`` plus weights.

    Parameters
    ----------
    folder
        Created if missing.
    model_cfg
        open_clip ``model_cfg`` (default: :data:`TINY_MODEL_CFG`, a 2-layer ViT on 64 px).
    preprocess_cfg
        open_clip ``preprocess_cfg`` overrides (size defaults to the vision tower's size).
    seed
        Weight initialisation seed.
    weights
        ``"safetensors"`` (``open_clip_model.safetensors``), ``"bin"``
        (``open_clip_pytorch_model.bin``, a ``torch.save`` state dict) or None (config only).

    Returns
    -------
    Path
        ``folder``.
    """
    import open_clip
    from open_clip.factory import CLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = dict(model_cfg or TINY_MODEL_CFG)
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], **(preprocess_cfg or {})}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    if weights is None:
        return folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "open_clip_model.safetensors"))
    elif weights == "bin":
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"weights={weights!r}; choose 'safetensors', 'bin' or None")
    del open_clip
    return folder


# transformers CLIPConfig keyword arguments: a tiny one, and the shapes of OpenAI's published
# openai/clip-vit-base-patch32 and openai/clip-vit-large-patch14 (random weights here).
_QUICK = {"hidden_act": "quick_gelu"}
TRANSFORMERS_CONFIGS: dict[str, dict] = {
    "tiny": {
        "projection_dim": 32,
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        "vision_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
    },
    "ViT-B-32": {
        "projection_dim": 512,
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            **_QUICK,
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            **_QUICK,
        },
    },
    "ViT-L-14": {
        "projection_dim": 768,
        "text_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            **_QUICK,
        },
        "vision_config": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 224,
            "patch_size": 14,
            **_QUICK,
        },
    },
}


def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's byte-level BPE vocabulary and merges, from the file open_clip ships."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the rows CLIP's tokenizer uses
    base = list(bytes_to_unicode().values())
    tokens = [*base, *(b + "</w>" for b in base), *("".join(m.split()) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_transformers_model_dir(
    folder: str | Path, *, config: str | dict = "tiny", seed: int = 0, nemo_layout: bool = False
) -> Path:
    """Write a seeded random transformers ``CLIPModel`` folder, laid out as published on the hub.

    ``config.json`` + ``model.safetensors`` (``save_pretrained``), the tokenizer as
    ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` (CLIP's real BPE, from the copy
    open_clip ships), and ``preprocessor_config.json`` in the published form (``"size": 224``,
    ``"crop_size": 224``, ``"resample": 3``). No network.

    Parameters
    ----------
    folder
        Created if missing.
    config
        A key of :data:`TRANSFORMERS_CONFIGS` or ``CLIPConfig`` keyword arguments.
    seed
        Weight initialisation seed.
    nemo_layout
        Write NeMo Curator's ``model_dir`` layout: the model in
        ``folder/openai/clip-vit-large-patch14/``.

    Returns
    -------
    Path
        ``folder`` (the root, for ``nemo_layout``).
    """
    from transformers import CLIPConfig, CLIPModel

    root = Path(folder)
    target = root / "openai" / "clip-vit-large-patch14" if nemo_layout else root
    target.mkdir(parents=True, exist_ok=True)
    kwargs = TRANSFORMERS_CONFIGS[config] if isinstance(config, str) else config
    clip_config = CLIPConfig(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(clip_config)
    model.save_pretrained(str(target), safe_serialization=True)
    vocab, merges = _clip_bpe()
    (target / "vocab.json").write_text(json.dumps(vocab))
    (target / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    tokenizer_config = {
        **special,
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "model_max_length": 77,
        "tokenizer_class": "CLIPTokenizer",
    }
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (target / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}, indent=2))
    size = int(kwargs["vision_config"].get("image_size", 224))
    preprocessor = {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": size,
    }
    (target / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return root


def _save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_aesthetic_weights(path: str | Path, *, dim: int = 768, seed: int = 0) -> Path:
    """Seeded random weights of LAION's aesthetic predictor, in the published layout.

    ``layers.{0,2,4,6,7}.{weight,bias}`` as a ``torch.save`` state dict (``.pth``) or a
    safetensors file (``.safetensors``, as NeMo Curator downloads it), chosen by the suffix.
    The scores they give are meaningless; tests, benchmarks and the offline notebook use them.
    """
    from .heads.modules import AestheticMLP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = AestheticMLP(dim)
    return _save_state(module.state_dict(), Path(path))


def write_nsfw_weights(path: str | Path, *, dim: int = 768, seed: int = 0) -> Path:
    """Seeded random weights of LAION's NSFW detector in NeMo Curator's torch layout
    (``norm.mean``, ``norm.variance``, ``linear_{1..4}.{weight,bias}``), ``.pth`` or
    ``.safetensors`` by suffix. The normalisation statistics are drawn at the scale of unit
    D-dimensional embeddings (per-feature variance about 1/D)."""
    from .heads.modules import NSFWDetector

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = NSFWDetector(dim)
        state = module.state_dict()
        state["norm.mean"] = torch.randn(dim) / dim**0.5 / 4
        state["norm.variance"] = (0.5 + torch.rand(dim)) / dim
    return _save_state(state, Path(path))


def encode_image(array: np.ndarray, fmt: str = "JPEG", **save: object) -> bytes:
    """Encode a uint8 (H, W) or (H, W, C) array with Pillow (``fmt``: any Pillow format)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in 100-odd bytes: a header and a token IDAT.

    What a decompression bomb looks like to a decoder's first look (the size is read from the
    IHDR chunk before any pixel is decoded), without building the image in memory.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * (width + 1))  # one filtered row of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def solid_png(width: int, height: int, rgb: tuple[int, int, int] = (90, 140, 200)) -> bytes:
    """A valid RGB PNG of one colour, written row by row: a few KB that decode to
    ``width * height * 3`` bytes, made without holding the image in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    encoder = zlib.compressobj(9)
    idat = b"".join(encoder.compress(row) for _ in range(height)) + encoder.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reference_embeddings(model_dir: str, images: list[bytes]) -> np.ndarray:
    """open_clip's own pipeline, the parity reference (docs/design.md): PIL decode ->
    ``convert("RGB")`` -> the model's preprocess transform -> ``encode_image`` -> L2-normalise.

    Returns
    -------
    numpy.ndarray
        float32 (N, D).
    """
    import io

    import open_clip
    from PIL import Image

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


def odd_images(photos: list) -> dict[str, bytes]:
    """The shapes and modes that trip decoders up, made from three uint8 (H, W, 3) photos:
    strips, 1x1, grayscale, RGBA, palette, CMYK, progressive JPEG, WebP, GIF, BMP, TIFF and a
    20-megapixel JPEG, each encoded with Pillow."""
    import io

    import numpy as np
    from PIL import Image

    astronaut, coffee, chelsea = photos[0], photos[1], photos[2]
    big = np.asarray(Image.fromarray(coffee).resize((5472, 3648), Image.Resampling.BILINEAR))  # 20 MP
    cmyk = io.BytesIO()
    Image.fromarray(chelsea).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    return {
        "tall strip 30x600": encode_image(astronaut[:, 200:230].repeat(2, axis=0)[:600], "PNG"),
        "wide strip 700x40": encode_image(np.ascontiguousarray(coffee[100:140, :]).repeat(2, axis=1)[:, :700], "PNG"),
        "1x1": encode_image(astronaut[:1, :1], "PNG"),
        "grayscale": encode_image(np.asarray(Image.fromarray(chelsea).convert("L")), "JPEG", quality=90),
        "RGBA": encode_image(np.dstack([coffee, np.full(coffee.shape[:2], 128, np.uint8)]), "PNG"),
        "palette": encode_image(
            np.asarray(Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE)), "PNG"
        ),
        "CMYK JPEG": cmyk.getvalue(),
        "progressive JPEG": encode_image(chelsea, "JPEG", quality=85, progressive=True),
        "WebP": encode_image(coffee, "WEBP", quality=90),
        "GIF": encode_image(astronaut, "GIF"),
        "BMP": encode_image(chelsea, "BMP"),
        "TIFF": encode_image(coffee, "TIFF"),
        "20 megapixel JPEG": encode_image(big, "JPEG", quality=85),
    }


def photo_crops(
    n: int, *, seed: int = 0, min_size: tuple[int, int] = (500, 375), max_size: tuple[int, int] = (800, 600)
) -> list:
    """n distinct crops of scikit-image's photographs (astronaut, coffee, chelsea, rocket,
    Hubble deep field), each upscaled to 1200x900 first: web-size test images.

    Parameters
    ----------
    n
        Number of crops.
    seed
        Crop sizes and positions.
    min_size, max_size
        (width, height) bounds of the crops, inclusive.

    Returns
    -------
    list of numpy.ndarray
        uint8 (H, W, 3), C-contiguous.

    Raises
    ------
    ImportError
        scikit-image is not installed (it is a test dependency).
    """
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    sources = [np.asarray(Image.fromarray(s).resize((1200, 900))) for s in sources]
    crops = []
    for i in range(n):
        w = int(rng.integers(min_size[0], max_size[0] + 1))
        h = int(rng.integers(min_size[1], max_size[1] + 1))
        x, y = int(rng.integers(0, 1200 - w)), int(rng.integers(0, 900 - h))
        crops.append(np.ascontiguousarray(sources[i % len(sources)][y : y + h, x : x + w]))
    return crops


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

    from .backends.arrow import list_float32_array

    return pd.arrays.ArrowExtensionArray(
        list_float32_array(np.asarray(embeddings, np.float32), np.asarray(valid, bool))
    )


def photo_like(
    n: int, *, seed: int = 0, min_size: tuple[int, int] = (320, 240), max_size: tuple[int, int] = (800, 600)
) -> list[np.ndarray]:
    """Synthetic photo-like images that need no data files: smooth multi-scale colour fields,
    hard-edged shapes (chroma edges, where JPEG decoders differ most) and sensor-like noise.

    Parameters
    ----------
    n
        Number of images.
    seed
        Sizes and contents.
    min_size, max_size
        (width, height) bounds, inclusive; sizes are drawn log-uniformly in pixel count.

    Returns
    -------
    list of numpy.ndarray
        uint8 (H, W, 3).
    """
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = _draw_size(rng, min_size, max_size)
        # Drawn at a base size of at most 640 px, then enlarged: large images cost no more to make.
        scale = min(1.0, 640 / max(w, h))
        bw, bh = max(8, round(w * scale)), max(8, round(h * scale))
        field = np.zeros((bh, bw, 3), np.float32)
        for cells, amplitude in ((3, 90.0), (7, 45.0), (17, 20.0), (41, 8.0)):
            coarse = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
            for c in range(3):
                layer = Image.fromarray(coarse[:, :, c], mode="F").resize((bw, bh), Image.Resampling.BICUBIC)
                field[:, :, c] += amplitude * np.asarray(layer)
        mix = np.eye(3, dtype=np.float32) * 0.6 + 0.4 * rng.random((3, 3), dtype=np.float32)
        image = Image.fromarray(np.clip(field @ mix.T + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, bw - 8)), int(rng.integers(0, bh - 8))
            x1, y1 = int(rng.integers(x0 + 4, bw)), int(rng.integers(y0 + 4, bh))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        if (bw, bh) != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)
        # sensor-like noise at full size (what makes the JPEGs' entropy-coded data realistic)
        noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        out.append(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8))
    return out


def _draw_size(rng: np.random.Generator, min_size: tuple[int, int], max_size: tuple[int, int]) -> tuple[int, int]:
    """A (width, height) between the bounds: log-uniform in area, aspect between the bounds' own."""
    lo, hi = min_size[0] * min_size[1], max_size[0] * max_size[1]
    area = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    aspect = rng.uniform(min(min_size[0] / min_size[1], 0.75), max(max_size[0] / max_size[1], 1.34))
    w = int(np.clip(round((area * aspect) ** 0.5), min_size[0], max_size[0]))
    h = int(np.clip(round(area / w), min_size[1], max_size[1]))
    return w, h


@dataclass(frozen=True)
class WebImage:
    """One encoded image of :func:`web_images`: its bytes and what it is."""

    name: str
    data: bytes
    kind: str  # "jpeg 4:2:0", "jpeg 4:4:4", "progressive", "grayscale", "cmyk", "png", "webp",
    #            "exif-rotated", "corrupt", "truncated"
    width: int
    height: int


WEB_IMAGE_KINDS = (
    "jpeg 4:2:0",
    "jpeg 4:4:4",
    "progressive",
    "grayscale",
    "cmyk",
    "png",
    "webp",
    "exif-rotated",
    "corrupt",
    "truncated",
)
# How often each kind occurs, roughly as on the web: mostly baseline 4:2:0 JPEGs.
_WEB_MIX = (0.52, 0.1, 0.12, 0.06, 0.02, 0.06, 0.05, 0.03, 0.02, 0.02)


def web_images(
    n: int,
    *,
    seed: int = 0,
    min_size: tuple[int, int] = (320, 240),
    max_size: tuple[int, int] = (4000, 3000),
    kinds: tuple[str, ...] | None = None,
) -> list[WebImage]:
    """Distinct encoded images that look like what crawls give: varied sizes (log-uniform in area
    between the bounds), mostly 4:2:0 JPEGs at mixed quality, and the odd ones decoders trip on
    — 4:4:4, progressive, grayscale, CMYK, PNG, WebP, EXIF-rotated, corrupt (damaged entropy-coded
    data behind an intact header: it still parses) and truncated.

    Parameters
    ----------
    n
        Number of images.
    seed
        Everything random.
    min_size, max_size
        (width, height) bounds.
    kinds
        Only these kinds, in turn (default: the web's mix, drawn at random).

    Returns
    -------
    list of WebImage
    """
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = photo_like(n, seed=seed, min_size=min_size, max_size=max_size)
    out = []
    for i, image in enumerate(pixels):
        kind = kinds[i % len(kinds)] if kinds else str(rng.choice(WEB_IMAGE_KINDS, p=_WEB_MIX))
        quality = int(rng.integers(60, 96))
        picture = Image.fromarray(image)
        buffer = io.BytesIO()
        if kind in ("jpeg 4:2:0", "corrupt", "truncated"):
            picture.save(buffer, format="JPEG", quality=quality, subsampling=2)
        elif kind == "jpeg 4:4:4":
            picture.save(buffer, format="JPEG", quality=quality, subsampling=0)
        elif kind == "progressive":
            picture.save(buffer, format="JPEG", quality=quality, progressive=True)
        elif kind == "grayscale":
            picture.convert("L").save(buffer, format="JPEG", quality=quality)
        elif kind == "cmyk":
            picture.convert("CMYK").save(buffer, format="JPEG", quality=quality)
        elif kind == "png":
            picture.save(buffer, format="PNG")
        elif kind == "webp":
            picture.save(buffer, format="WEBP", quality=quality)
        elif kind == "exif-rotated":
            exif = Image.Exif()
            exif[0x0112] = int(rng.choice([3, 6, 8]))  # Orientation: 180, 90 CW, 90 CCW
            picture.save(buffer, format="JPEG", quality=quality, exif=exif.tobytes())
        data = buffer.getvalue()
        if kind == "corrupt":
            data = _damage_entropy_data(data, rng)
        elif kind == "truncated":
            data = data[: int(len(data) * rng.uniform(0.3, 0.8))]
        out.append(WebImage(f"{i:05d}-{kind.replace(' ', '').replace(':', '')}", data, kind, *picture.size))
    return out


def _damage_entropy_data(jpeg: bytes, rng: np.random.Generator) -> bytes:
    """Flip bytes in a JPEG's entropy-coded data, after the start of scan: the header and the EOI
    marker stay intact, so the file still parses (and routes to nvJPEG) but does not decode cleanly."""
    data = bytearray(jpeg)
    start = data.find(b"\xff\xda") + 20  # past the SOS header
    end = len(data) - 2
    for at in rng.integers(start, end, size=max(8, (end - start) // 200)):
        value = int(rng.integers(0, 255))
        data[int(at)] = value if value != 0xFF else 0x00  # no new markers
    return bytes(data)


#: Captions for tests of the text tower: real ones, then the kinds a caption column holds wrong
#: (an empty string, and a null).
CAPTIONS = [
    "an astronaut in a white spacesuit",
    "a cup of coffee on a saucer",
    "a cat lying on a table",
    "a rocket on the launch pad, photographed at dawn with a long lens from across the water",
    "",
    "a picture that could not be decoded",
    None,
]
