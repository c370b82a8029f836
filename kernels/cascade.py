"""Shared-prefix (cascade) attention: KV that many queries share is read once for all of them.

A cascade has levels. Each level groups the batch's query tokens (same tokens, same order, at every
level) into requests over that level's KV: level 0 might hold one request with all n samples of a
prompt over the prompt's pages; the last level one request per sample over the sample's own pages.
Every query token attends each level's KV of its group, and the per-level states merge by their
log-sum-exp into attention over the concatenated KV (prefix first). Levels compose: a prefix shared
by all, a sub-prefix shared by some, then each request's own suffix.

How it runs: a shared level's groups stack their queries into one request, so its KV is read once per
group, not once per query. Shared levels use mask 'none' (the prefix precedes every query); the last
level is causal when it holds several queries per request (appending). A level runs the decode kernel
when its requests have one query each, or when it is shared and each group's stacked query rows
(queries x GQA group) fit one decode CTA (64 rows); other levels (appending, or groups too large for
one decode CTA) run the prefill kernel, whose 128-row tile would be mostly padding for a few samples
of a prompt. Each level is planned on its own by kernels/scheduler.py (split over KV chunks as any
batch), then all decode levels run as ONE launch: their work lists one after the other over one batch
of their requests (each reading its query tokens from its first token, api.h), the shared prefix's
chunks dispatched first; each prefill level is a launch of its own, side by side on a forked stream
(their partial rows are disjoint). Every launch writes float32 partial states into one buffer, and
ONE merge launch combines, for each token, its states across levels and KV chunks. The measurements
behind these choices are in docs/PERFORMANCE.md (shared-prefix section). Position-dependent variants
(RoPE, ALiBi, sliding windows) are not offered: a level's key positions would start at 0 instead of
at the level's offset in the concatenated KV.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import ops, scheduler
from .checks import InvalidArgument
from .scheduler import DEFAULT_COST, PREFILL_COST, CostModel, KernelShape, Plan
from .wrapper_engine import (
    KV_BYTES,
    Staging,
    check_heads,
    check_indptr,
    check_knobs,
    host_index,
    kernel_shape,
    make_knobs,
    signature,
    split_cache,
    variant_for,
)


@dataclass(frozen=True)
class Launch:
    """One attention launch of a cascade: the batch of the requests of `levels`, level after level."""

    family: str
    mask: str
    levels: tuple[int, ...]
    plans: tuple[Plan, ...]  # per level, as the scheduler planned it alone
    work: np.ndarray  # int32 [items, 6]: the plans' items, requests and partial rows in the batch's terms
    qo_lens: np.ndarray  # int64 [batch]: query tokens per request of the batch
    first_token: np.ndarray  # int32 [batch + 1]: each request's first query token, then num_tokens

    @property
    def stacked(self) -> bool:
        """Whether the kernel needs first_token (as qo_indptr): not for one level of one query each,
        where request r is token r."""
        return len(self.levels) > 1 or not one_query_each(self.qo_lens)


@dataclass(frozen=True)
class CascadePlan:
    """The launches, whose partial rows share one buffer, and the merge index across levels."""

    launches: tuple[Launch, ...]
    families: tuple[str, ...]  # per level
    merge_indptr: np.ndarray  # int32 [num_tokens + 1]
    merge_indices: np.ndarray  # int32, partial rows of all launches
    num_partial_rows: int
    num_tokens: int


def one_query_each(qo_lens: np.ndarray) -> bool:
    return bool(qo_lens.shape[0]) and bool((qo_lens == 1).all())


def level_families(qo_lens: Sequence[np.ndarray], group: int, decode_tile_q: int) -> tuple[str, ...]:
    """The kernel family of each level (module docstring): decode for one query per request, or for a
    shared level whose stacked rows (qo_len x group) fit decode_tile_q; prefill otherwise."""
    last = len(qo_lens) - 1
    return tuple(
        "decode"
        if one_query_each(qo) or (i < last and qo.shape[0] and int(qo.max()) * group <= decode_tile_q)
        else "prefill"
        for i, qo in enumerate(qo_lens)
    )


def level_mask(level: int, num_levels: int, family: str) -> str:
    return "causal" if level == num_levels - 1 and family == "prefill" else "none"


def plan_cascade(
    levels: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    num_qo_heads: int,
    num_kv_heads: int,
    page_size: int,
    kernels: Sequence[KernelShape],
    families: Sequence[str],
    kv_bytes: int = 2,
    split_kv: bool = True,
    cost: CostModel | None = None,
    force_chunk: int = 0,
) -> CascadePlan:
    """levels: (qo_lens, kv_lens) per level; families and kernels: each level's kernel family
    (level_families) and KernelShape; cost: one cost model for every level (default: the decode or
    prefill model of its kernel); force_chunk: scheduler.plan's calibration knob, for every level.
    Launches go in the order of their first level (measured against the reverse at 32 samples, where
    the prefix is a prefill launch: docs/PERFORMANCE.md)."""
    if not levels:
        raise ValueError("a cascade needs at least one level")
    qo_all = [np.asarray(qo, dtype=np.int64).reshape(-1) for qo, _ in levels]
    kv_all = [np.asarray(kv, dtype=np.int64).reshape(-1) for _, kv in levels]
    num_tokens = int(qo_all[0].sum())
    for i, (qo, family) in enumerate(zip(qo_all, families, strict=True)):
        if int(qo.sum()) != num_tokens:
            raise ValueError(
                f"level {i} groups {int(qo.sum())} query tokens but level 0 groups {num_tokens}: every level "
                "must group the same tokens"
            )
        if family not in ("decode", "prefill"):
            raise ValueError(f"level {i}: family must be 'decode' or 'prefill', got {family!r}")
    plans, tokens, rows, base = [], [], [], 0
    for i, (qo, kv, kernel, family) in enumerate(zip(qo_all, kv_all, kernels, families, strict=True)):
        p = scheduler.plan(
            None if one_query_each(qo) else qo,
            kv,
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            page_size=page_size,
            kernel=kernel,
            mask=level_mask(i, len(levels), family),
            split_kv=split_kv,
            kv_bytes=kv_bytes,
            all_partial=True,
            cost=cost or (DEFAULT_COST if family == "decode" else PREFILL_COST),
            force_chunk=force_chunk,
        )
        work = p.work[: p.num_items].copy()
        work[:, 5] = np.where(work[:, 5] >= 0, work[:, 5] + base, -1)
        plans.append(dataclasses.replace(p, work=work))
        counts = np.diff(p.merge_indptr[: num_tokens + 1].astype(np.int64))
        tokens.append(np.repeat(np.arange(num_tokens), counts))
        rows.append(p.merge_indices.astype(np.int64) + base)
        base += p.num_partial_rows
    # Each level is planned as if alone (the scheduler's cost model does not know that a CTA of 64 stacked
    # rows costs more per key than one of a few rows: planned together, it cut a 4k prefix into too few
    # chunks, see docs/PERFORMANCE.md); the decode levels then share one launch, level after level.
    decode_levels = tuple(i for i, f in enumerate(families) if f == "decode")
    groups = [(i,) for i, f in enumerate(families) if f == "prefill"]
    groups = sorted(groups + ([decode_levels] if decode_levels else []))
    launches = []
    for group in groups:
        qo = np.concatenate([qo_all[i] for i in group])
        first = np.concatenate([np.cumsum(qo_all[i]) - qo_all[i] for i in group] + [[num_tokens]])
        offsets = np.cumsum([0] + [qo_all[i].shape[0] for i in group])
        work = np.concatenate([plans[i].work for i in group])
        work[:, 0] += np.repeat(offsets[:-1], [plans[i].num_items for i in group]).astype(np.int32)
        family = families[group[0]]
        launches.append(
            Launch(
                family,
                level_mask(group[0], len(levels), family),
                group,
                tuple(plans[i] for i in group),
                work,
                qo,
                first.astype(np.int32),
            )
        )
    token = np.concatenate(tokens)
    order = np.argsort(token, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(token, minlength=num_tokens))])
    return CascadePlan(
        tuple(launches),
        tuple(families),
        indptr.astype(np.int32),
        np.concatenate(rows)[order].astype(np.int32),
        base,
        num_tokens,
    )


def _launch_arrays(launch: Launch, host_levels) -> dict[str, np.ndarray]:
    """The paged-KV index arrays of a launch's batch: its levels' (qo_indptr, kv_indptr, kv_indices,
    kv_last_page_len) one after the other, page offsets shifted past the earlier levels' pages."""
    kv_ptrs, indices, lasts, at = [], [], [], 0
    for level in launch.levels:
        _, kv_ptr, kv_indices, last = host_levels[level]
        kv_ptrs.append(kv_ptr[:-1] + at)
        at += int(kv_ptr[-1])
        indices.append(kv_indices[: int(kv_ptr[-1])])
        lasts.append(last)
    return {
        "kv_indptr": np.concatenate([*kv_ptrs, [at]]).astype(np.int32),
        "kv_indices": np.concatenate(indices).astype(np.int32),
        "kv_last_page_len": np.concatenate(lasts).astype(np.int32),
    }


def _arena(sizes: dict[str, int]) -> tuple[dict[str, int], int]:
    offsets, at = {}, 0
    for name, nbytes in sizes.items():
        offsets[name] = at
        at += -(-nbytes // scheduler.ALIGN_BYTES) * scheduler.ALIGN_BYTES
    return offsets, at


def _view(workspace: torch.Tensor, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    return workspace[offset : offset + count * 4].view(dtype)  # int32 and float32 alike


def workspace_size(
    num_levels: int,
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    max_batch_size: int,
    max_num_tokens: int,
    max_num_pages: int = 0,
    num_sms: int = 132,
) -> int:
    """Workspace bytes a CascadeWrapper needs: per level at most max_batch_size requests over
    max_num_pages host-given page ids; max_num_tokens query tokens."""
    cap = scheduler.capacity(
        max_batch=max_batch_size,
        max_tokens=max_num_tokens,
        group=num_qo_heads // num_kv_heads,
        cta_tile_q=1,
        num_sms=num_sms,
        decode=False,
        max_pages=max_num_pages,
    )
    per_level = 4 * (cap.work_items * 6 + 3 * (cap.batch + 1) + cap.pages) + 5 * scheduler.ALIGN_BYTES
    rows = num_levels * (max_num_tokens + cap.partial_rows)
    merge = 4 * (max_num_tokens + 1 + rows) + 2 * scheduler.ALIGN_BYTES
    return (
        num_levels * per_level + merge + rows * num_qo_heads * (head_dim + 1) * 4 + 2 * scheduler.ALIGN_BYTES
    )


class CascadeWrapper:
    """Multi-level shared-prefix attention over one paged KV cache (FlashInfer's
    MultiLevelCascadeAttentionWrapper): plan per batch with one index-array set per level, then run."""

    def __init__(self, num_levels: int, workspace: torch.Tensor, kv_layout: str = "NHD"):
        if num_levels < 1:
            raise InvalidArgument(f"num_levels must be >= 1, got {num_levels}")
        if not isinstance(workspace, torch.Tensor) or workspace.dtype != torch.uint8 or not workspace.is_cuda:
            raise InvalidArgument("workspace must be a uint8 CUDA tensor (see cascade.workspace_size)")
        if kv_layout not in ops.KV_LAYOUTS:
            raise InvalidArgument(f"kv_layout must be one of {ops.KV_LAYOUTS}, got {kv_layout!r}")
        self.num_levels, self.workspace, self.kv_layout = num_levels, workspace, kv_layout
        self.staging = Staging()
        self.plan_: CascadePlan | None = None
        self.side_streams: list[torch.cuda.Stream] = []
        self.events: list[torch.cuda.Event] = []

    def plan(
        self,
        qo_indptr_arr,
        paged_kv_indptr_arr,
        paged_kv_indices_arr,
        paged_kv_last_page_len_arr,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        *,
        q_dtype=torch.bfloat16,
        kv_dtype=None,
        logits_soft_cap: float | None = None,
        sm_scale: float | None = None,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        split_kv: bool = True,
    ) -> None:
        """One entry per level in each *_arr list: qo_indptr (query tokens per group; the same tokens at
        every level), and the level's paged KV (kv_indptr in pages, kv_indices, kv_last_page_len).
        Index arrays on the host are best (CUDA tensors cost a device-to-host copy)."""
        arrays = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len_arr)
        if any(len(a) != self.num_levels for a in arrays):
            raise InvalidArgument(f"each *_arr argument must have one entry per level ({self.num_levels})")
        check_heads(num_qo_heads, num_kv_heads)
        device = self.workspace.device
        device_index = device.index if device.index is not None else torch.cuda.current_device()
        host_levels, lens = [], []
        for i, (qo_indptr, kv_indptr, kv_indices, last_page_len) in enumerate(zip(*arrays, strict=True)):
            qo_ptr = host_index(f"qo_indptr_arr[{i}]", qo_indptr)
            kv_ptr = host_index(f"paged_kv_indptr_arr[{i}]", kv_indptr, length=qo_ptr.shape[0])
            indices = host_index(f"paged_kv_indices_arr[{i}]", kv_indices)
            last = host_index(f"paged_kv_last_page_len_arr[{i}]", last_page_len, length=qo_ptr.shape[0] - 1)
            check_indptr(f"qo_indptr_arr[{i}]", qo_ptr)
            check_indptr(f"paged_kv_indptr_arr[{i}]", kv_ptr, indices.shape[0])
            host_levels.append((qo_ptr, kv_ptr, indices, last))
            lens.append((np.diff(qo_ptr), scheduler.kv_lengths(kv_ptr, last, page_size)))

        def variant(family, mask):
            return variant_for(family, q_dtype, kv_dtype, head_dim, mask, "none", logits_soft_cap)

        decode_tile_q = kernel_shape(variant("decode", "none"), device_index).cta_tile_q
        families = level_families([qo for qo, _ in lens], num_qo_heads // num_kv_heads, decode_tile_q)
        knobs = make_knobs(sm_scale, logits_soft_cap, 1.0, 1e4, k_scale, v_scale, -1, None)
        variants = [variant(f, level_mask(i, self.num_levels, f)) for i, f in enumerate(families)]
        for v in set(variants):
            check_knobs(v, knobs, num_qo_heads)
        kernels = [kernel_shape(v, device_index) for v in variants]
        try:
            cp = plan_cascade(
                lens,
                num_qo_heads=num_qo_heads,
                num_kv_heads=num_kv_heads,
                page_size=page_size,
                kernels=kernels,
                families=families,
                kv_bytes=KV_BYTES[variants[0].kv_dtype],
                split_kv=split_kv,
            )
        except ValueError as e:
            raise InvalidArgument(str(e)) from None

        # Each launch's batch: its levels' requests one after the other (pages of later levels offset).
        batches = [_launch_arrays(launch, host_levels) for launch in cp.launches]
        sizes = {}
        for i, (launch, batch) in enumerate(zip(cp.launches, batches, strict=True)):
            sizes[f"work{i}"] = launch.work.nbytes
            sizes[f"qo_indptr{i}"] = launch.first_token.nbytes
            sizes |= {f"{name}{i}": a.nbytes for name, a in batch.items()}
        sizes |= {"merge_indptr": cp.merge_indptr.nbytes, "merge_indices": cp.merge_indices.nbytes}
        offsets, metadata_bytes = _arena(sizes)
        partial = cp.num_partial_rows * num_qo_heads
        total = metadata_bytes + _arena({"o": partial * head_dim * 4, "lse": partial * 4})[1]
        if self.workspace.numel() < total:
            raise InvalidArgument(
                f"workspace holds {self.workspace.numel()} bytes but this cascade needs {total}: allocate "
                "cascade.workspace_size(...) bytes for your largest batch"
            )
        host = self.staging.reserve(metadata_bytes)
        contents = {"merge_indptr": cp.merge_indptr, "merge_indices": cp.merge_indices}
        for i, (launch, batch) in enumerate(zip(cp.launches, batches, strict=True)):
            contents |= {f"work{i}": launch.work.reshape(-1), f"qo_indptr{i}": launch.first_token}
            contents |= {f"{name}{i}": a for name, a in batch.items()}
        for name, values in contents.items():
            host[offsets[name] // 4 : offsets[name] // 4 + values.shape[0]] = values
        self.staging.upload(self.workspace, metadata_bytes)

        def view(name, count, dtype=torch.int32):
            return _view(self.workspace, offsets[name], count, dtype)

        self.launches = []
        for i, (launch, batch) in enumerate(zip(cp.launches, batches, strict=True)):
            b = launch.qo_lens.shape[0]
            self.launches.append(
                (
                    variant(launch.family, launch.mask),
                    launch.work.shape[0],
                    {
                        "work": view(f"work{i}", launch.work.size).view(-1, 6),
                        # The decode kernel takes first tokens for stacked queries only (api.h).
                        "qo_indptr": view(f"qo_indptr{i}", b + 1) if launch.stacked else None,
                        "kv_indptr": view(f"kv_indptr{i}", b + 1),
                        "kv_indices": view(f"kv_indices{i}", batch["kv_indices"].shape[0]),
                        "kv_last_page_len": view(f"kv_last_page_len{i}", b),
                    },
                )
            )
        partial_o = _view(self.workspace, metadata_bytes, partial * head_dim, torch.float32)
        self.partial_o = partial_o.view(-1, num_qo_heads, head_dim)
        lse_at = metadata_bytes + _arena({"o": partial * head_dim * 4})[1]
        self.partial_lse = _view(self.workspace, lse_at, partial, torch.float32).view(-1, num_qo_heads)
        self.merge_views = (
            view("merge_indptr", cp.merge_indptr.shape[0]),
            view("merge_indices", cp.merge_indices.shape[0]),
        )
        self.knobs = {
            "sm_scale": sm_scale,
            "logits_soft_cap": float(logits_soft_cap or 0.0),
            "k_scale": k_scale,
            "v_scale": v_scale,
        }
        self.plan_ = cp
        self.prepared = {}

    def run(self, q: torch.Tensor, paged_kv_cache, *, out=None, lse=None, return_lse: bool = False):
        """q [num_tokens, Hq, D]; paged_kv_cache = (k_cache, v_cache) holding every level's pages.
        Returns out (and lse [num_tokens, Hq] float32 with return_lse)."""
        if self.plan_ is None:
            raise RuntimeError("call plan() before run()")
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "CascadeWrapper does not support CUDA-graph capture (its buffers move with each plan)"
            )
        k, v = split_cache(paged_kv_cache)
        if q.dim() != 3 or q.shape[0] != self.plan_.num_tokens:
            raise InvalidArgument(f"q must be [{self.plan_.num_tokens}, Hq, D] (the planned tokens)")
        if out is None:
            out = torch.empty_like(q)
        if lse is None and return_lse:
            lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
        self.launcher(q, k, v, out, lse)()
        return (out, lse) if return_lse else out

    def launcher(self, q, k, v, out, lse=None):
        """The kernel launches of run() for these tensors, as a closure (benchmarks capture it in a
        CUDA graph; valid until the next plan)."""
        key = tuple(signature(t) for t in (q, k, v, out, lse))
        launches = self.prepared.get(key)
        if launches is None:
            launches = self.prepared[key] = self._prepare(q, k, v, out, lse)
        *levels, merge = launches
        if len(levels) > len(self.side_streams) + 1:
            self.side_streams += [torch.cuda.Stream(q.device) for _ in range(len(levels) - 1)]
            self.events += [torch.cuda.Event() for _ in range(len(levels))]
        streams, events = self.side_streams, self.events

        def launch():
            # The launches write disjoint partial rows, so they run side by side: the first on the
            # current stream, the others on side streams forked from it and joined before the merge.
            main = torch.cuda.current_stream(q.device)
            if len(levels) > 1:
                events[0].record(main)
            for i, attention in enumerate(levels[1:]):
                with torch.cuda.stream(streams[i]):
                    streams[i].wait_event(events[0])
                    attention.launch(q, k, v, out, None)
                    events[i + 1].record(streams[i])
            if levels:
                levels[0].launch(q, k, v, out, None)
            for i in range(1, len(levels)):
                main.wait_event(events[i])
            merge.launch(out, lse)

        return launch

    def _prepare(self, q, k, v, out, lse):
        launches = []
        for variant, num_items, views in self.launches:
            if not num_items:
                continue
            launches.append(
                ops.prepare_attention(
                    variant,
                    q,
                    k,
                    v,
                    out,
                    kv_layout=self.kv_layout,
                    partial_o=self.partial_o,
                    partial_lse=self.partial_lse,
                    # Every index array (the page lists too) is in the workspace, uploaded by plan()
                    # before any launch of the plan: the kernels may read it early (api.h flags).
                    index_ready=True,
                    pages_ready=True,
                    **views,
                    **self.knobs,
                )
            )
        merge = ops.prepare_merge(
            self.partial_o, self.partial_lse, *self.merge_views, out, lse, index_ready=True
        )
        return (*launches, merge)
