"""Everything that runs: kernel-pack loading, validation, the scheduler, wrappers and the reference.

The user-facing API is importable from here (`from flashinfer_build.kernels import BatchDecodeWrapper`).
It is resolved lazily, so that the build side (wheelbuild reads kernels.abi) never imports torch.
"""

import importlib

_PUBLIC = {
    "BatchDecodeWrapper": "wrappers",
    "BatchPrefillWrapper": "wrappers",
    "single_decode": "wrappers",
    "single_prefill": "wrappers",
    "workspace_size": "wrappers",
    "CascadeWrapper": "cascade",
    "merge_state": "ops",
    "merge_state_list": "ops",
    "append_paged_kv_cache": "ops",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
