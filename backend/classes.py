"""Semantic class lists. Index = position; order as the official SIM code (alphabetical SIMD folders)."""

from __future__ import annotations

import json
from pathlib import Path

SIMD_CLASSES: tuple[str, ...] = (
    "defocus", "fire", "fur", "glass_ice", "hair_easy",
    "hair_hard", "insect", "motion", "net", "plant_flower",
    "plant_leaf", "plant_tree", "plastic_bag", "sharp", "smoke_cloud",
    "spider_web", "texture_holed", "texture_smooth", "water_drop", "water_spray",
)  # fmt: skip


def load_class_list(source: str | Path | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Return a class list: None -> the 20 SIMD classes; a list; a comma string; or a JSON / text file."""
    if source is None:
        return SIMD_CLASSES
    if isinstance(source, (list, tuple)):
        names = [str(s).strip() for s in source]
    else:
        path = Path(source)
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            names = json.loads(text) if path.suffix == ".json" else text.split()
        else:
            names = str(source).split(",")
        names = [n.strip() for n in names]
    names = [n for n in names if n]
    if not names:
        raise ValueError("class list is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class list has duplicates: {names}")
    return tuple(names)
