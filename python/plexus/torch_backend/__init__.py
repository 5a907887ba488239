"""The "plexus" backend for torch.distributed: ``dist.init_process_group("plexus")``.

It registers itself (1) when torch is imported, through the ``torch.backends`` entry point
(:func:`_autoload`), (2) when ``import plexus`` runs after torch was imported, and (3) by an
explicit :func:`register`. Its collectives are thin adapters over the collective layer the
numpy API uses (plexus._collectives): CPU tensors run in the plexus core, zero-copy; CUDA
tensors through plexus.device, whose table says how each collective travels (CUDA IPC between
the ranks of one host for all_reduce, all_gather, all_gather_into_tensor, reduce_scatter_tensor,
broadcast and reduce; pinned host memory otherwise).

Files: ``process_group.py`` (the dist.ProcessGroup subclass torch gets from the creator),
``work.py`` (its Work, and the one thread per group that completes futures), ``ops.py``
(torch's ReduceOp and tensors as the collective layer's buffers).

What torch 2.13 does not let a Python process group do (whatever the backend does):
- ``dist.monitored_barrier``: torch checks ``get_backend(group) == "gloo"`` and raises ValueError.
- ``dist.split_group``: needs the default group's ``bound_device_id`` (an accelerator device);
  on CPU torch raises "No device associated with the default pg".
- ``pg.set_timeout`` / ``_set_pg_timeout``: go to per-device C++ Backends, which a Python
  group has none of: a silent no-op; the timeout stays the one given at creation.
- the ``"cpu:plexus,cuda:nccl"`` form: a creator returning a ProcessGroup replaces the group,
  so one group cannot mix plexus with another backend.
Also: per-call ``opts.timeout`` is not used (the group's timeout bounds every op), and the
multi-tensor-per-process form of a collective (deprecated in torch) raises ValueError.
"""

from __future__ import annotations

import sys
import warnings

BACKEND_NAME = "plexus"
# Devices the backend is registered for (cpu first: torch's default device for barrier() and
# object collectives when CUDA is absent).
DEVICES = ["cpu", "cuda"]

_registered = False
_autoload_warned = False


def _create(dist_opts, backend_options=None):
    from .process_group import create

    return create(dist_opts, backend_options)


def register() -> None:
    """Makes ``init_process_group("plexus")`` and ``new_group(backend="plexus")`` work
    (idempotent)."""
    global _registered
    if _registered:
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=list(DEVICES))
    _registered = True


def _autoload() -> None:
    """Entry point of the ``torch.backends`` group, run by ``import torch``. It must never
    raise: an exception here would make ``import torch`` itself fail."""
    global _autoload_warned
    try:
        register()
    except Exception as e:  # noqa: BLE001
        if not _autoload_warned:
            _autoload_warned = True
            try:
                warnings.warn(f"plexus: could not register the torch.distributed backend: {e!r}", RuntimeWarning,
                              stacklevel=2)
            except Exception:  # noqa: BLE001 - warnings set to "error" must not break import torch
                print(f"plexus: could not register the torch.distributed backend: {e!r}", file=sys.stderr)


def __getattr__(name):
    # The process group class is imported lazily: the autoload hook stays cheap.
    if name in ("PlexusProcessGroup", "Work"):
        from . import process_group, work

        return getattr(process_group if name == "PlexusProcessGroup" else work, name)
    raise AttributeError(name)


__all__ = ["BACKEND_NAME", "DEVICES", "PlexusProcessGroup", "Work", "register"]
