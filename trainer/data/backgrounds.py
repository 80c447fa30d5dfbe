"""Background sources for compositing: image folders plus procedurally generated backgrounds.

Works with no data at all (generated backgrounds only), so training and tests run anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from trainer.data.synthetic import value_noise

__all__ = ["IMAGE_EXTENSIONS", "BackgroundSource", "generate_background", "list_images", "read_rgb"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder`` (by extension)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB (grey replicated, alpha channel dropped, 16-bit scaled to 8)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, 2)
    if img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1])


def generate_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random procedural background, H×W×3 float32 in [0, 1].

    Kinds: smooth gradient with noise, blurred random shapes (bokeh-like), streaky texture, coloured fractal
    noise. All have structure at several scales, so a network cannot detect "generated background" by
    flatness alone.
    """
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = math.cos(ang) * xx / w + math.sin(ang) * yy / h
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    if kind == 1:  # blurred shapes (defocused scene)
        layer = np.zeros((h, w, 3), np.float32)
        for _ in range(int(rng.integers(10, 40))):
            col = tuple(float(v) for v in rng.uniform(0, 1, 3))
            p = (int(rng.uniform(0, w) * 16), int(rng.uniform(0, h) * 16))
            r = int(rng.uniform(0.02, 0.2) * max(h, w) * 16)
            if rng.random() < 0.5:
                cv2.circle(layer, p, r, col, -1, cv2.LINE_AA, 4)
            else:
                cv2.ellipse(layer, p, (r, r // 2 + 16), rng.uniform(0, 180), 0, 360, col, -1, cv2.LINE_AA, 4)
        sig = rng.uniform(0.0, 0.02) * max(h, w)
        if sig > 0.5:
            layer = cv2.GaussianBlur(layer, (0, 0), sig)
        img = np.where(layer.sum(2, keepdims=True) > 0, layer, img)
    elif kind == 2:  # streaky texture (wood, fabric, grass-like)
        cell = (
            (rng.uniform(20, 80), rng.uniform(2, 6))
            if rng.random() < 0.5
            else (rng.uniform(2, 6), rng.uniform(20, 80))
        )
        n = value_noise(rng, (h, w), cell, 3)
        img = img * (0.6 + 0.8 * n[..., None])
    elif kind == 3:  # coloured fractal noise
        for ch in range(3):
            img[..., ch] = img[..., ch] * 0.5 + 0.5 * value_noise(rng, (h, w), rng.uniform(8, 64), 4)
    img = img + rng.normal(0, rng.uniform(0, 0.03), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


class BackgroundSource:
    """Random background crops from image folders, mixed with generated backgrounds.

    Images are read once and kept in memory as uint8 (the intended sources are small: a few dozen
    images). Each call picks a source, scales it so that it covers the request with a random extra zoom,
    crops at a random position and flips at random.

    Args:
        sources: None, a folder, an image path, or an iterable of those. Missing folders are skipped, so
            ``BackgroundSource(["/work/shared/data/backgrounds"])`` degrades to generated backgrounds on a
            machine without the data.
        generated_fraction: probability of a generated background when image files exist (1.0 if none).
        zoom: range of the extra random zoom factor.
    """

    def __init__(
        self,
        sources: str | Path | Iterable[str | Path] | None = None,
        generated_fraction: float = 0.3,
        zoom: tuple[float, float] = (1.0, 1.6),
    ) -> None:
        if sources is None:
            items: list[str | Path] = []
        elif isinstance(sources, (str, Path)):
            items = [sources]
        else:
            items = list(sources)
        self.paths: list[Path] = []
        for it in items:
            p = Path(it)
            if p.is_dir():
                self.paths.extend(list_images(p))
            elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                self.paths.append(p)
        self.generated_fraction = 1.0 if not self.paths else float(generated_fraction)
        self.zoom = zoom
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as H×W×3 uint8 (cached)."""
        if i not in self._cache:
            self._cache[i] = read_rgb(self.paths[i])
        return self._cache[i]

    def sample(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """A background of exactly H×W, as H×W×3 float32 in [0, 1]."""
        if not self.paths or rng.random() < self.generated_fraction:
            return generate_background(rng, h, w)
        img = self.image(int(rng.integers(len(self.paths))))
        ih, iw = img.shape[:2]
        scale = max(h / ih, w / iw) * rng.uniform(*self.zoom)
        nh, nw = max(h, math.ceil(ih * scale)), max(w, math.ceil(iw * scale))
        # Crop in source coordinates first, then resize only the crop (cheap for big sources).
        y = rng.uniform(0, nh - h + 1e-6) / scale
        x = rng.uniform(0, nw - w + 1e-6) / scale
        ch, cw = h / scale, w / scale
        y0, x0 = int(y), int(x)
        y1, x1 = min(ih, math.ceil(y + ch) + 1), min(iw, math.ceil(x + cw) + 1)
        crop = img[y0:y1, x0:x1]
        out = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out, dtype=np.float32) / 255.0

    def sample_many(self, rng: np.random.Generator, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return [self.sample(rng, h, w) for h, w in sizes]
