"""Host-neutral plug-in core: trimap building, pixel formats, settings, request life cycle.

Pure Python (stdlib; pyzmq + msgpack only through ``backend.client``). Krita and GIMP ship different
Pythons, none of which is guaranteed to have numpy, so all pixel work here is done on ``bytes``
with slicing, ``bytes.translate`` and big-integer bit tricks (C speed, no per-pixel Python loops).
"""
