"""The one wire protocol shared by daemon, CLI, batch client and editor plug-ins.

Stdlib + msgpack only: this module is imported inside Krita / GIMP Pythons (no numpy, no torch).
"""

from __future__ import annotations

# Trimap pixel values (8-bit). The official SIM code tests these with exact equality.
TRIMAP_BG = 0
TRIMAP_UNKNOWN = 128
TRIMAP_FG = 255
