"""Semantic Matte backend: SIM models, inference pipeline, daemon.

Importing ``backend`` (or ``backend.protocol`` / ``backend.client``) must never import torch or numpy:
the editor plug-ins reuse those modules inside host Pythons that have neither.
"""

__version__ = "0.1.0"
