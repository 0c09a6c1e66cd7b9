"""Images for tests and benchmarks: encoded photos, odd and hostile files, web-like mixes, captions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CAPTIONS",
    "WEB_IMAGE_KINDS",
    "WebImage",
    "encode_image",
    "odd_images",
    "photo_crops",
    "photo_like",
    "png_bomb",
    "solid_png",
    "web_images",
]


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
