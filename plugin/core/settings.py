"""Plug-in settings: one schema with defaults, validation, JSON (de)serialisation.

Hosts persist the JSON text where they like (Krita: ``kritarc`` via ``writeSetting``; GIMP keeps its own
procedure config, built from the same schema). Invalid stored values fall back to the default instead
of breaking the plug-in on load (a lesson from krita-ai-diffusion's settings handling).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

OUTPUT_MODES = ("mask", "layer")  # transparency / layer mask, or new cut-out layer
TRIMAP_SOURCES = ("selection", "layer")  # selection + band, or a painted trimap layer
DEFAULT_SERVER = "tcp://127.0.0.1:5555"
# Version of the stored settings. Stored values of a field whose default changed since their version are
# dropped on load, so that users who never touched it get the new default:
# 2 (session 14): nonlocal_edges on by default (the daemon's default refinement became "nonlocal").
SCHEMA = 2
DEFAULTS_CHANGED = {2: ("nonlocal_edges",)}


def parse_server(text: Any) -> str:
    """The daemon address as the protocol reads it (``HOST:PORT`` becomes ``tcp://HOST:PORT``); ValueError if it
    is none (a stored non-string included)."""
    if isinstance(text, str):
        try:
            from backend.protocol import parse_endpoint
        except Exception:  # noqa: BLE001 - as default_server: a damaged backend copy must not break loading
            if "://" in text:
                return text.strip()
        else:
            return parse_endpoint(text)
    raise ValueError(f"not a daemon address: {text!r}")


def default_server() -> str:
    """Daemon address: the protocol's default ($SEMANTIC_MATTE_ENDPOINT or the local ipc socket)."""
    try:  # the protocol module owns the canonical default when it defines one
        from backend import protocol

        fn = getattr(protocol, "default_endpoint", None)
        return str(fn()) if callable(fn) else str(getattr(protocol, "DEFAULT_ENDPOINT", DEFAULT_SERVER))
    except Exception:  # noqa: BLE001 - settings must load even when the backend copy is damaged
        return DEFAULT_SERVER


@dataclass
class Settings:
    server: str = ""
    band: int = 10  # px on each side of the selection edge that become "unknown"
    trimap_source: str = "selection"
    trimap_layer: str = "trimap"  # name of the painted trimap layer (trimap_source == "layer")
    class_override: str = ""  # "" = let the model's classifier decide
    output: str = "mask"
    semantic_preview: bool = False  # also add a layer showing the semantic map / class shares
    refine_edges: bool = True  # daemon re-solves alpha where the network is unsure (protocol option "refine")
    nonlocal_edges: bool = True  # ... with the nonlocal term: better hair and fur (refine "nonlocal", the default)
    timeout_s: float = 120.0  # whole request deadline
    connect_timeout_s: float = 3.0  # "is the daemon there?" probe
    schema: int = SCHEMA  # the version these settings were stored with (see DEFAULTS_CHANGED)

    def __post_init__(self) -> None:
        if not self.server:
            self.server = default_server()

    # -- validation -------------------------------------------------------------------------------
    def validated(self) -> Settings:
        """Copy with every out-of-range / mistyped field replaced by its default."""
        d = Settings()
        out = Settings(**asdict(self))
        try:
            out.server = parse_server(out.server)
        except ValueError:
            out.server = d.server
        checks = {
            "server": lambda v: isinstance(v, str),
            "band": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1000,
            "trimap_source": lambda v: v in TRIMAP_SOURCES,
            "trimap_layer": lambda v: isinstance(v, str),
            "class_override": lambda v: isinstance(v, str),
            "output": lambda v: v in OUTPUT_MODES,
            "semantic_preview": lambda v: isinstance(v, bool),
            "refine_edges": lambda v: isinstance(v, bool),
            "nonlocal_edges": lambda v: isinstance(v, bool),
            "timeout_s": lambda v: isinstance(v, (int, float)) and 0.1 <= v <= 3600,
            "connect_timeout_s": lambda v: isinstance(v, (int, float)) and 0.1 <= v <= 60,
            "schema": lambda v: v == SCHEMA,
        }
        for f in fields(self):
            if not checks[f.name](getattr(out, f.name)):
                setattr(out, f.name, getattr(d, f.name))
        return out

    def refine_mode(self) -> str:
        """The protocol's ``refine`` option these settings ask for."""
        from backend import protocol as P  # lazily, as default_server: settings load without the backend

        if not self.refine_edges:
            return P.REFINE_OFF
        return P.REFINE_NONLOCAL if self.nonlocal_edges else P.REFINE_BAND

    # -- persistence ------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Settings:
        if not isinstance(data, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        stored = data.get("schema", 1)  # settings stored before the field existed are version 1
        if isinstance(stored, int) and not isinstance(stored, bool):
            known -= {name for version, names in DEFAULTS_CHANGED.items() if stored < version for name in names}
        s = cls()
        for k, v in data.items():
            if k in known:
                setattr(s, k, v)
        return s.validated()

    @classmethod
    def from_json(cls, text: str | None) -> Settings:
        try:
            return cls.from_dict(json.loads(text or "{}"))
        except ValueError:
            return cls()
