"""Build ``sample.parquet``, the bundled demo set: a few hundred small images with planted
near-duplicates, in img2dataset's layout.

Run once by a maintainer (``python scripts/make_sample.py``); the Parquet is committed, so
neither the demo nor the notebook needs scikit-image at run time. Sources are scikit-image's
bundled photographs that carry no copyright restrictions (public domain or CC0, per each
``skimage.data`` function's docstring) and procedurally generated pictures; the output is
deterministic for a given Pillow/NumPy/scikit-image version.

Columns
-------
key : string
    ``"000123"``, unique.
caption : string
    What the picture is (source and transform).
jpg : binary
    The encoded image (JPEG; a few rows are deliberately broken, see below).
width, height : int32
    Pixel size (null for broken rows).
source : string
    ``"skimage:<name>"``, ``"procedural:<kind>"`` or ``"broken"``.
planted_duplicate_of : string
    For a planted near-duplicate (re-encoded, slightly resized or brightened copy), the key of
    its original; null otherwise.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

__all__ = ["build_sample", "main"]

SEED = 20260801
N_PHOTO_VARIANTS = 10  # per source photo
N_PROCEDURAL = 110
N_DUPLICATES = 36
# scikit-image photos documented as public domain or CC0 (bundled with the wheel, no download).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "retina",
    "rocket",
    "text",
)


def _photo(name: str) -> Image.Image:
    from skimage import data

    array = np.asarray(getattr(data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def _photo_variant(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A crop at a random place and scale, then one or two recolourings/rotations."""
    w, h = image.size
    side = int(rng.uniform(0.35, 0.9) * min(w, h))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = image.crop((left, top, left + side, top + side))
    steps = [f"crop {side}px at ({left},{top})"]
    for op in rng.choice(["rot90", "rot180", "flip", "hue", "gray", "invert", "posterize", "rot15"], 2, replace=False):
        if op == "rot90":
            out = out.transpose(Image.Transpose.ROTATE_90)
        elif op == "rot180":
            out = out.transpose(Image.Transpose.ROTATE_180)
        elif op == "flip":
            out = ImageOps.mirror(out)
        elif op == "hue":
            hsv = np.asarray(out.convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(40, 200))) % 256
            out = Image.fromarray(hsv, "HSV").convert("RGB")
        elif op == "gray":
            out = ImageOps.colorize(out.convert("L"), tuple(rng.integers(0, 90, 3)), tuple(rng.integers(160, 256, 3)))
        elif op == "invert":
            out = ImageOps.invert(out)
        elif op == "posterize":
            out = ImageOps.posterize(out, int(rng.integers(2, 4)))
        else:
            out = out.rotate(float(rng.uniform(10, 25)), resample=Image.Resampling.BICUBIC, expand=False)
        steps.append(str(op))
    size = int(rng.integers(112, 208))
    return out.resize((size, size), Image.Resampling.LANCZOS), ", ".join(steps)


def _procedural(kind: str, rng: np.random.Generator) -> Image.Image:
    """A generated picture of one ``kind``; colours, sizes and layout are drawn from ``rng``."""
    w, h = int(rng.integers(112, 208)), int(rng.integers(112, 208))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colours = rng.integers(0, 256, (4, 3)).astype(np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        array = colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]
    elif kind == "checkerboard":
        cell = int(rng.integers(6, 40))
        mask = ((xx // cell + yy // cell) % 2)[..., None]
        array = colours[0] * mask + colours[1] * (1 - mask)
    elif kind == "rings":
        cx, cy, period = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(6, 30)
        t = (0.5 + 0.5 * np.sin(np.hypot(xx - cx, yy - cy) / period * 2 * np.pi))[..., None]
        array = colours[0] * t + colours[2] * (1 - t)
    elif kind == "plasma":
        t = np.zeros((h, w), np.float32)
        for _ in range(4):
            fx, fy, phase = [*rng.uniform(0.01, 0.08, 2).tolist(), rng.uniform(0, 6.3)]
            t += np.sin(xx * fx + yy * fy + phase)
        t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
        array = colours[1] * t + colours[3] * (1 - t)
    elif kind == "noise":
        coarse = rng.random((int(rng.integers(3, 12)), int(rng.integers(3, 12)), 3)) * 255
        array = np.asarray(
            Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32
        )
    else:  # shapes
        image = Image.new("RGB", (w, h), tuple(int(c) for c in colours[0]))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            box = sorted(rng.integers(0, w, 2).tolist()), sorted(rng.integers(0, h, 2).tolist())
            xy = [box[0][0], box[1][0], box[0][1] + 4, box[1][1] + 4]
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = rng.choice(["ellipse", "rectangle", "polygon"])
            if shape == "ellipse":
                draw.ellipse(xy, fill=fill)
            elif shape == "rectangle":
                draw.rectangle(xy, fill=fill)
            else:
                draw.polygon(
                    [tuple(p) for p in rng.integers(0, min(w, h), (int(rng.integers(3, 7)), 2)).tolist()], fill=fill
                )
        return image
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _near_duplicate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A copy that differs in bytes but hardly in content: what web crawls are full of."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    how = rng.choice(["reencode", "resize", "brighten"])
    if how == "resize":
        scale = float(rng.uniform(0.85, 0.95))
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        return _jpeg(image, 85), f"resized x{scale:.2f}"
    if how == "brighten":
        factor = float(rng.uniform(1.02, 1.05))
        return _jpeg(ImageEnhance.Brightness(image).enhance(factor), 85), f"brightened x{factor:.2f}"
    quality = int(rng.integers(55, 75))
    return _jpeg(image, quality), f"re-encoded at JPEG quality {quality}"


def build_sample() -> pa.Table:
    """The sample as an Arrow table (see the module docstring for the columns)."""
    rng = np.random.default_rng(SEED)
    rows: list[dict] = []
    for name in PHOTOS:
        photo = _photo(name)
        for _ in range(N_PHOTO_VARIANTS):
            image, how = _photo_variant(photo, rng)
            rows.append({"jpg": _jpeg(image, 85), "caption": f"{name}: {how}", "source": f"skimage:{name}"})
    kinds = ("gradient", "checkerboard", "rings", "plasma", "noise", "shapes")
    for i in range(N_PROCEDURAL):
        kind = kinds[i % len(kinds)]
        rows.append(
            {"jpg": _jpeg(_procedural(kind, rng), 85), "caption": f"generated {kind}", "source": f"procedural:{kind}"}
        )
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    for i, row in enumerate(rows):
        row["key"] = f"{i:06d}"
    for i in rng.choice(len(rows), N_DUPLICATES, replace=False):
        original = rows[i]
        data, how = _near_duplicate(original["jpg"], rng)
        rows.append(
            {
                "jpg": data,
                "caption": f"{original['caption']} ({how})",
                "source": original["source"],
                "planted_duplicate_of": original["key"],
            }
        )
    rows.append({"jpg": rows[0]["jpg"][: len(rows[0]["jpg"]) // 3], "caption": "truncated JPEG", "source": "broken"})
    rows.append({"jpg": b"this is not an image", "caption": "not an image", "source": "broken"})
    rows.append({"jpg": None, "caption": "missing image", "source": "broken"})
    # Spread the copies among the originals, then give every row its final key.
    tail = rows[len(order) :]
    final = rows[: len(order)]
    for row in tail:
        final.insert(int(rng.integers(0, len(final) + 1)), row)
    renamed = {row["key"]: f"{i:06d}" for i, row in enumerate(final) if "key" in row}
    for i, row in enumerate(final):
        row["key"] = f"{i:06d}"
        if row.get("planted_duplicate_of"):
            row["planted_duplicate_of"] = renamed[row["planted_duplicate_of"]]
    sizes = []
    for row in final:
        try:
            sizes.append(Image.open(io.BytesIO(row["jpg"])).size if row["jpg"] else (None, None))
        except Exception:  # the broken rows, on purpose
            sizes.append((None, None))
    return pa.table(
        {
            "key": pa.array([r["key"] for r in final], pa.string()),
            "caption": pa.array([r["caption"] for r in final], pa.string()),
            "jpg": pa.array([r["jpg"] for r in final], pa.binary()),
            "width": pa.array([s[0] for s in sizes], pa.int32()),
            "height": pa.array([s[1] for s in sizes], pa.int32()),
            "source": pa.array([r["source"] for r in final], pa.string()),
            "planted_duplicate_of": pa.array([r.get("planted_duplicate_of") for r in final], pa.string()),
        }
    )


def main(path: str | Path | None = None) -> Path:
    """Write the sample (default: next to this file) in row groups of 32 rows."""
    path = Path(path) if path is not None else Path(__file__).parents[1] / "dask_clip" / "data" / "sample.parquet"
    table = build_sample()
    pq.write_table(table, path, row_group_size=32, compression="zstd")
    print(f"{path}: {table.num_rows} rows, {path.stat().st_size / 1e6:.2f} MB")
    return path


if __name__ == "__main__":
    main()
