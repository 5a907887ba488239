"""Where the libucx wheel keeps libucp.so.0 (pip install libucx-cu12 or -cu13), for the ucx
transport, which looks there last (after PLEXUS_UCX_LIBRARY and the system's libucp.so.0).
Found without importing the wheel; nothing is loaded until a group needs UCX."""

from __future__ import annotations

import importlib.util
import os
from typing import Optional


def wheel_library() -> Optional[str]:
    """The wheel's libucp.so.0, or None when no libucx wheel is installed."""
    try:
        spec = importlib.util.find_spec("libucx")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "lib", "libucp.so.0")
        if os.path.isfile(path):
            return path
    return None
