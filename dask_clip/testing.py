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
    from .models import LoadedModel

__all__ = [
    "TINY_MODEL_CFG",
    "TINY_TEXT_MODEL_CFG",
    "TRANSFORMERS_CONFIGS",
    "ProjectionHead",
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
