"""Editor plug-ins (Krita, GIMP 3). ``plugin.core`` is host-neutral pure Python (no Qt, gi, numpy, torch)."""
