"""The embedded default task: procedural multi-cue segmentation that needs no download.

Each sample is drawn from ``numpy.random.default_rng([seed, split, index])``, so it depends only on those
three numbers (not on the worker process or on what was drawn before). The classes ask for different things:

- ``stripes_h`` / ``stripes_v``: large regions of a second texture under bands of period 12-20 px; they
  differ only in the bands' orientation, seen over a window of a period or more (receptive field).
- ``blob``: large smooth regions in a warm or a cool colour (the large-object end).
- ``marker_warm`` / ``marker_cool``: identical square markers (side about 0.2-0.26 of the image side: 13-17 px
  at 64 px, 27-35 px at 128) on a plain grey halo reaching 0.09-0.13 of the side beyond them, inside a blob;
  the class is the colour family of the blob beyond the halo (context). Every image has a warm and a cool
  blob, so the image as a whole does not tell. Markers and halo scale with the image, so at any size the
  marker's centre is a fifth to a quarter of the side from the cue: a stride-4-8 path has too small a receptive
  field at 128 px, while a stride-32 path sees it and its coarse map can still outline a marker (see
  experiments/studies/arch_sensitivity.py for the measurement).
- ``dot``: discs of radius 2-4 px, among look-alike rings; ``curve``: 1-2 px curves that wiggle with a period
  of 10-18 px, among straight look-alike lines (small and thin: they need a high-resolution path).
- ``background``: one of scikit-image's bundled textures (brick, grass, gravel), tinted; brick's mortar lines
  are a local look-alike of the bands and the lines.

Object scales and positions are random. Dots, curves and markers are rare by area. The dataset around this
generator, and the two variants whose right path is known, are in `synthetic_dataset` and `known_answer`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

CLASSES = ("background", "stripes_h", "stripes_v", "blob", "dot", "curve", "marker_warm", "marker_cool")
BACKGROUND, STRIPES_H, STRIPES_V, BLOB, DOT, CURVE, MARKER_WARM, MARKER_COOL = range(len(CLASSES))
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZE = {"train": 512, "val": 256, "test": 512}
"""Images per split. Validation (what selection reads) and test (what claims are made on) are large enough
that one network's mIoU on them varies across training seeds by much less than between networks
(docs/validation.md); at 64 px they evaluate in seconds."""


@functools.cache
def textures() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled CC0 textures, zero-mean and unit-std float32 (loaded once per process)."""
    from skimage import data

    out = []
    for name in ("brick", "grass", "gravel"):
        t = getattr(data, name)().astype(np.float32)
        out.append((t - t.mean()) / t.std())
    return tuple(out)


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _texture_patch(rng: np.random.Generator, size: int, which: int) -> np.ndarray:
    """A size x size crop of texture ``which`` at a random zoom (0.6-1.4) and offset."""
    tex = textures()[which]
    zoom = rng.uniform(0.6, 1.4)
    span = int(np.ceil(size * zoom)) + 1
    y0, x0 = rng.integers(0, tex.shape[0] - span, size=2)
    idx = (np.arange(size) * zoom).astype(np.int64)
    return tex[y0 + idx][:, x0 + idx]


def _blob_mask(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """A random star-shaped blob: a stretched circle whose radius wobbles with 2nd and 3rd harmonics.

    The harmonics are expanded into polynomials of cos/sin theta (no arctan2) to keep this cheap.
    """
    yy, xx = _grid(size)
    cy, cx = (float(v) for v in rng.uniform(-0.1, 1.1, size=2) * size)
    a1, a2, p1, p2, rot = (float(v) for v in rng.uniform((0, 0, 0, 0, 0), (0.25, 0.25, 6.3, 6.3, 3.2)))
    stretch = float(rng.uniform(-0.3, 0.3))
    dy, dx = yy - cy, xx - cx
    d2 = dy * dy + dx * dx + 1e-6
    d = np.sqrt(d2)
    cos, sin = dx / d, dy / d
    cos2, sin2 = (dx * dx - dy * dy) / d2, 2 * dx * dy / d2
    cos3, sin3 = cos * (4 * cos * cos - 3), sin * (3 - 4 * sin * sin)
    wobble = 1 + a1 * (sin2 * math.cos(p1) + cos2 * math.sin(p1)) + a2 * (sin3 * math.cos(p2) + cos3 * math.sin(p2))
    r = float(radius) * wobble * (1 + stretch * (cos2 * math.cos(2 * rot) + sin2 * math.sin(2 * rot)))
    return d2 < r * r


def _colour(rng: np.random.Generator, low: float = 0.25, high: float = 0.85) -> np.ndarray:
    return rng.uniform(low, high, size=3).astype(np.float32)


def _paint(image: np.ndarray, label: np.ndarray, mask: np.ndarray, pixels: np.ndarray, cls: int) -> None:
    image[mask] = pixels if pixels.ndim == 1 else pixels[mask]
    label[mask] = cls


WARM = ((0.75, 0.95), (0.25, 0.55), (0.05, 0.3))
COOL = ((0.05, 0.3), (0.3, 0.6), (0.7, 0.95))
"""RGB ranges of the two blob colour families; a marker's class is the family of the blob around it."""


def _stripes(rng: np.random.Generator, image, label, size: int, background_tex: int) -> None:
    """Two or three regions of a second texture under bands of period 12-20 px, horizontal or vertical; the
    first two have opposite orientations so that the image as a whole does not give the answer away."""
    yy, xx = _grid(size)
    first = int(rng.integers(2))
    for k in range(rng.integers(2, 4)):
        cls = (STRIPES_H, STRIPES_V)[(first + k) % 2] if k < 2 else (STRIPES_H, STRIPES_V)[rng.integers(2)]
        mask = _blob_mask(rng, size, rng.uniform(0.2, 0.34) * size)
        tex = _texture_patch(rng, size, (background_tex + rng.integers(1, 3)) % 3)
        along, across = (yy, xx) if cls == STRIPES_H else (xx, yy)
        period, wave, phase1, phase2 = (float(v) for v in rng.uniform((12, 30, 0, 0), (20, 60, 6.3, 6.3)))
        wobble = 2.0 * np.sin(across * (2 * math.pi / wave) + phase1)
        bands = np.sin((along + wobble) * (2 * math.pi / period) + phase2)
        gray = 0.5 + 0.1 * tex + 0.14 * bands
        _paint(image, label, mask, gray[..., None] * (2 * _colour(rng, 0.35, 0.65)), cls)


def _blobs(rng: np.random.Generator, image, label, size: int) -> list[tuple[np.ndarray, int]]:
    """A warm and a cool smooth blob (a third of either family half the time); returns (mask, marker class)."""
    families = [(WARM, MARKER_WARM), (COOL, MARKER_COOL)]
    if rng.random() < 0.5:
        families.append(families[rng.integers(2)])
    blobs = []
    for ranges, marker in families:
        mask = _blob_mask(rng, size, rng.uniform(0.26, 0.34) * size)
        colour = np.array([rng.uniform(*r) for r in ranges], dtype=np.float32)
        _paint(image, label, mask, colour + 0.03 * rng.standard_normal((size, size, 3), np.float32), BLOB)
        blobs.append((mask, marker))
    return blobs


def _markers(rng: np.random.Generator, image, label, size: int, blobs) -> None:
    """Two to four identical square markers, each on a neutral grey halo (labelled blob) inside a blob: the
    blob's colour family, visible only beyond the halo, decides marker_warm or marker_cool. Half side 0.10-0.13
    and halo 0.09-0.13 of the image side: large enough for a stride-32 map to outline, far enough from the
    colour to need its receptive field. A marker that finds no room in 30 tries is left out."""
    yy, xx = _grid(size)
    for _ in range(rng.integers(2, 5)):
        half = max(3, round(size * float(rng.uniform(0.1, 0.13))))
        halo = half + size * float(rng.uniform(0.09, 0.13))
        for _try in range(30):
            mask, marker = blobs[rng.integers(len(blobs))]
            inside = np.flatnonzero(mask & (label == BLOB))
            if len(inside) == 0:
                continue
            cy, cx = (int(v) for v in divmod(rng.choice(inside), size))
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= halo * halo
            if half < cy < size - half - 1 and half < cx < size - half - 1 and (mask & disc).sum() > 0.7 * disc.sum():
                break
        else:
            continue
        image[disc & (label == BLOB)] = 0.5
        ys, xs = slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1)
        image[ys, xs] = 0.05
        image[cy - half + 1:cy + half, cx - half + 1:cx + half] = 0.95
        image[cy - 1:cy + 2, cx - 1:cx + 2] = 0.05
        label[ys, xs] = marker


def _line_points(rng: np.random.Generator, size: int, wiggle: bool) -> np.ndarray:
    """Integer (y, x) points of a 1 or 2 px line across the image: straight, or wiggling sideways by 2-4 px
    with a period of 10-18 px (the wiggle is what makes it a curve; it spans more than a 3x3 stem sees)."""
    a, b = rng.uniform(-0.1, 1.1, size=(2, 2)) * size
    length = float(np.hypot(*(b - a)))
    t = np.linspace(0, 1, max(int(3 * length), 2))[:, None]
    pts = a + t * (b - a)
    if wiggle:
        normal = np.array([-(b - a)[1], (b - a)[0]]) / max(length, 1e-6)
        amp, period, phase = (float(v) for v in rng.uniform((2.0, 10.0, 0.0), (4.0, 18.0, 6.3)))
        pts = pts + amp * np.sin(t * length * 2 * math.pi / period + phase) * normal
    pts = np.round(pts).astype(np.int64)
    if rng.random() < 0.5:  # 2 px thick: add the right, lower and diagonal neighbours
        pts = np.concatenate([pts + d for d in ((0, 0), (0, 1), (1, 0), (1, 1))])
    return pts[(pts >= 0).all(1) & (pts < size).all(1)]


def _curves(rng: np.random.Generator, image, label, size: int) -> None:
    """One to three wiggly curves (class ``curve``) and as many straight look-alike lines that keep the label
    of the surface under them, in random colours."""
    count = int(rng.integers(1, 4))
    for k in range(2 * count):
        pts = _line_points(rng, size, wiggle=k < count)
        image[pts[:, 0], pts[:, 1]] = _colour(rng, 0.0, 1.0)
        if k < count:
            label[pts[:, 0], pts[:, 1]] = CURVE


def _dots(rng: np.random.Generator, image, label, size: int) -> None:
    """Five to twelve discs of radius 2-4 px in saturated random colours, and as many look-alike rings
    (1 px wall) that keep the label of the surface under them."""
    yy, xx = _grid(size)
    count = int(rng.integers(5, 13))
    for k in range(2 * count):
        r, cy, cx = (float(v) for v in rng.uniform((2.0, 0, 0), (4.0, size, size)))
        y0, y1 = int(max(cy - r - 1, 0)), int(min(cy + r + 2, size))
        x0, x1 = int(max(cx - r - 1, 0)), int(min(cx + r + 2, size))
        d2 = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2
        colour = _colour(rng, 0.0, 1.0)
        colour[rng.integers(3)] = rng.choice([0.0, 1.0])
        shape = d2 <= r * r if k < count else (d2 <= r * r) & (d2 > (r - 1.2) ** 2)
        image[y0:y1, x0:x1][shape] = colour
        if k < count:
            label[y0:y1, x0:x1][shape] = DOT


def generate(seed: int, split: str, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One sample: uint8 size x size x 3 image and uint8 size x size label, a function of its arguments only."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    bg = int(rng.integers(3))
    gray = 0.5 + 0.12 * _texture_patch(rng, size, bg)
    image = gray[..., None] * (2 * _colour(rng, 0.3, 0.7))
    label = np.zeros((size, size), dtype=np.uint8)
    _stripes(rng, image, label, size, bg)
    blobs = _blobs(rng, image, label, size)
    _markers(rng, image, label, size, blobs)
    _curves(rng, image, label, size)
    _dots(rng, image, label, size)
    image += 0.03 * rng.standard_normal(image.shape, np.float32)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), label
