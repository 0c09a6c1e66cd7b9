"""ModelSpec: what model to load, and how — the only model object that travels to workers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .validation import PRECISIONS, check_choice, check_device

__all__ = ["WEIGHT_FILE_PATTERNS", "ModelSpec", "find_weights"]

# open_clip's `local-dir:` loader looks for these (open_clip.factory._find_checkpoint_in_dir).
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pth")


def find_weights(model_dir: Path) -> list[Path]:
    """Weight files in a ``local-dir:`` folder, safetensors first.

    Parameters
    ----------
    model_dir
        A folder in open_clip's ``local-dir:`` layout.

    Returns
    -------
    list of Path
        Candidate checkpoint files; empty when the folder holds no weights.
    """
    found = [p for pattern in WEIGHT_FILE_PATTERNS for p in sorted(model_dir.glob(pattern))]
    return sorted(found, key=lambda p: p.suffix != ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """A small, hashable, picklable description of a CLIP image encoder.

    Workers key their model cache by this value, so two equal specs share one loaded model.

    Parameters
    ----------
    model
        open_clip architecture name, e.g. ``"ViT-L-14"`` (see ``open_clip.list_models()``).
        Ignored when ``model_dir`` is given: the folder's config decides.
    pretrained
        open_clip pretrained tag (``"openai"``, ``"laion2b_s32b_b82k"``, ...), a path to a
        checkpoint file, or ``None`` for seeded random weights (explicit request only).
    model_dir
        Folder in open_clip's ``local-dir:`` layout: ``open_clip_config.json`` plus weights
        (``*.safetensors`` preferred; ``*.bin``/``*.pth`` are read with ``weights_only=True``).
    precision
        ``"auto"`` (fp32 on CPU, bf16 on GPUs that support it, else fp16), ``"fp32"``,
        ``"fp16"`` or ``"bf16"``. Low precisions run under autocast; embeddings are float32.
    device
        ``"auto"`` (the worker's ``cuda:0`` when CUDA is available, else CPU), ``"cpu"``,
        ``"cuda"``.
    """

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    model_dir: str | None = None
    precision: str = "auto"
    device: str = "auto"

    def validate(self) -> None:
        """Check the spec on the client, before any graph is built.

        Raises
        ------
        ValueError
            Unknown architecture, pretrained tag, precision or device (the message lists the
            valid choices), or a ``model_dir`` config that is not open_clip's.
        FileNotFoundError
            ``model_dir`` or its config does not exist, or it holds no weight files.
        """
        import open_clip  # lazily: importing open_clip pulls in timm and friends

        check_choice("precision", self.precision, PRECISIONS)
        check_device(self.device)
        if self.model_dir is not None:
            self._validate_model_dir()
            return
        if self.model not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if self.model.lower()[:5] in m.lower()]
            raise ValueError(
                f"unknown open_clip architecture {self.model!r}; close matches: {close[:12]} "
                "(all: open_clip.list_models())"
            )
        if self.pretrained is None or Path(self.pretrained).is_file():
            return
        tags = open_clip.list_pretrained_tags_by_model(self.model)
        if self.pretrained not in tags:
            raise ValueError(
                f"pretrained={self.pretrained!r} is neither a checkpoint file nor a tag of "
                f"{self.model!r}; its tags: {tags}; or pass model_dir=, or pretrained=None "
                "for random weights"
            )

    def _validate_model_dir(self) -> None:
        folder = Path(str(self.model_dir)).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"model_dir {str(folder)!r} is not a folder")
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"model_dir {str(folder)!r} has no open_clip_config.json (open_clip's "
                "local-dir: layout; `huggingface-cli download <repo> --local-dir DIR` gives it)"
            )
        try:
            has_model_cfg = "model_cfg" in json.loads(config.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config} is not valid JSON: {err}") from err
        if not has_model_cfg:
            raise ValueError(f"{config} has no 'model_cfg' entry; it is not an open_clip config")
        if not find_weights(folder):
            # open_clip itself would log a warning and go on with random weights.
            raise FileNotFoundError(
                f"model_dir {str(folder)!r} holds no weights "
                f"({', '.join(WEIGHT_FILE_PATTERNS)}); refusing to use random weights"
            )

    @property
    def random_weights(self) -> bool:
        """True when the user asked for seeded random weights."""
        return self.model_dir is None and self.pretrained is None

    def describe(self) -> str:
        """A short name for messages: the architecture, or the model folder."""
        return f"model_dir {self.model_dir!r}" if self.model_dir is not None else f"model {self.model!r}"

    def model_config(self) -> dict | None:
        """open_clip's ``model_cfg`` of this spec, read without building the model (None if unknown)."""
        if self.model_dir is not None:
            config = Path(self.model_dir).expanduser() / "open_clip_config.json"
            try:
                return json.loads(config.read_text()).get("model_cfg")
            except (OSError, ValueError):
                return None
        import open_clip

        return open_clip.get_model_config(self.model)

    def embed_dim(self) -> int | None:
        """Width D of the embeddings, from the model config (None if it does not say)."""
        cfg = self.model_config()
        return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None
