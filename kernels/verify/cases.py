"""Random test batches for verify: shapes with the edge cases kernels get wrong, and their tensors.

A Case is drawn from a `random.Random` (so a seed reproduces it) and holds only shapes and knobs;
`make_inputs` turns it into tensors on a device from a torch generator seeded by the case. Lengths
always include 0 and 1 keys, lengths that are not a multiple of the page size, and (prefill) a request
whose query length equals its KV length; page tables are shuffled so that a kernel reading the wrong
page shows.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import torch

from ...variants import Variant, hooks
from .. import reference

DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8e4m3": torch.float8_e4m3fn,
    "fp8e5m2": torch.float8_e5m2,
}

HEAD_CONFIGS = ((32, 8), (32, 4), (32, 1), (16, 16), (8, 2), (4, 4))  # (num_qo_heads, num_kv_heads)
PAGE_SIZES = (1, 5, 16, 64)
SOFT_CAP = 5.0  # small enough that tanh bends the logits of scaled random queries (see make_inputs)


@dataclass(frozen=True)
class Limits:
    """Size bounds for random cases: the CPU emulation runs the same cases at a smaller scale."""

    max_batch: int = 12
    max_kv_len: int = 3000
    max_q_len: int = 300


GPU_LIMITS = Limits()
CPU_LIMITS = Limits(max_batch=6, max_kv_len=2000, max_q_len=40)


@dataclass(frozen=True)
class Case:
    """One random batch for one variant. page_size 0 means ragged (contiguous) KV."""

    seed: int
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    num_qo_heads: int
    num_kv_heads: int
    page_size: int
    kv_layout: str = "NHD"
    window_left: int = -1
    soft_cap: float = 0.0
    split_kv: bool = True

    @property
    def paged(self) -> bool:
        return self.page_size > 0

    def describe(self) -> str:
        kv = f"page {self.page_size} {self.kv_layout}" if self.paged else "ragged"
        extra = f" window {self.window_left}" if self.window_left >= 0 else ""
        extra += f" cap {self.soft_cap:g}" if self.soft_cap else ""
        extra += "" if self.split_kv else " no-split"
        return (
            f"batch {len(self.q_lens)}, q {_short(self.q_lens)}, kv {_short(self.kv_lens)}, "
            f"heads {self.num_qo_heads}/{self.num_kv_heads}, {kv}{extra}"
        )

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "q_lens": list(self.q_lens),
            "kv_lens": list(self.kv_lens),
            "num_qo_heads": self.num_qo_heads,
            "num_kv_heads": self.num_kv_heads,
            "page_size": self.page_size,
            "kv_layout": self.kv_layout,
            "window_left": self.window_left,
            "soft_cap": self.soft_cap,
            "split_kv": self.split_kv,
        }


def _short(lens: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, lens[:8])) + (",..." if len(lens) > 8 else "") + "]"


def random_cases(variant: Variant, rng: random.Random, count: int, limits: Limits = GPU_LIMITS) -> list[Case]:
    """`count` cases for `variant`; the first carries every length edge case at once."""
    return [_random_case(variant, rng, limits, edge=(i == 0)) for i in range(count)]


def _random_case(variant: Variant, rng: random.Random, limits: Limits, edge: bool) -> Case:
    num_qo_heads, num_kv_heads = rng.choice(HEAD_CONFIGS)
    paged = variant.family == "decode" or rng.random() < 0.7
    page_size = rng.choice(PAGE_SIZES) if paged else 0
    unit = max(page_size, 1)
    batch = rng.randint(1, limits.max_batch)
    kv_lens = [_kv_len(rng, unit, limits.max_kv_len) for _ in range(batch)]
    if edge:  # 0 keys, 1 key, a full page, one past a page, one short of several pages
        kv_lens = [0, 1, unit, unit + 1, 3 * unit - 1, *kv_lens][: max(batch, 7)]
        rng.shuffle(kv_lens)
    if variant.family == "decode":
        q_lens = [1] * len(kv_lens)
    else:
        q_lens = [_q_len(rng, kv, limits.max_q_len) for kv in kv_lens]
        if edge:  # q_len == kv_len on the longest request that fits max_q_len
            fits = [i for i, kv in enumerate(kv_lens) if 0 < kv <= limits.max_q_len]
            if fits:
                i = rng.choice(fits)
                q_lens[i] = kv_lens[i]
    window = rng.randint(0, max(kv_lens) + 1) if variant.mask == "sliding_window" else -1
    return Case(
        seed=rng.getrandbits(62),
        q_lens=tuple(q_lens),
        kv_lens=tuple(kv_lens),
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        page_size=page_size,
        kv_layout=rng.choice(("NHD", "HND")) if paged else "NHD",
        window_left=window,
        soft_cap=SOFT_CAP if variant.soft_cap else 0.0,
        split_kv=rng.random() < 0.8,
    )


def _kv_len(rng: random.Random, unit: int, max_kv_len: int) -> int:
    r = rng.random()
    if r < 0.1:
        return rng.randint(0, 2)
    if r < 0.3:
        return unit * rng.randint(1, max(1, max_kv_len // unit // 4))
    return int(math.exp(rng.uniform(0, math.log(max_kv_len))))


def _q_len(rng: random.Random, kv_len: int, max_q_len: int) -> int:
    if kv_len == 0:
        return 0
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.2:
        return 1
    if r < 0.3:
        return min(kv_len, max_q_len)
    return rng.randint(1, min(kv_len, max_q_len))


@dataclass
class Inputs:
    """The tensors of one case. Paged KV: k/v are caches [pages, page_size, Hkv, D] (NHD) or
    [pages, Hkv, page_size, D] (HND) with kv_indices/kv_last_page_len; ragged: k/v [total_kv, Hkv, D]."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    qo_indptr: torch.Tensor  # int32 [batch + 1], tokens
    kv_indptr: torch.Tensor  # int32 [batch + 1], pages (paged) or tokens (ragged)
    kv_indices: torch.Tensor | None
    kv_last_page_len: torch.Tensor | None
    sm_scale: float
    k_scale: float = 1.0
    v_scale: float = 1.0
    alibi_slopes: torch.Tensor | None = None
    custom_masks: list[torch.Tensor] = field(default_factory=list)  # per request [q_len, kv_len] bool

    @property
    def custom_mask(self) -> torch.Tensor | None:
        """All requests' masks flattened and concatenated, as BatchPrefillWrapper.plan takes them."""
        if not self.custom_masks:
            return None
        return torch.cat([m.reshape(-1) for m in self.custom_masks])

    def request_kv(self, case: Case, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Request r's keys and values as [kv_len, Hkv, D]."""
        if case.paged:
            args = (self.kv_indptr, self.kv_indices, self.kv_last_page_len, r, case.kv_layout)
            return reference.gather_paged(self.k, *args), reference.gather_paged(self.v, *args)
        lo, hi = int(self.kv_indptr[r]), int(self.kv_indptr[r + 1])
        return self.k[lo:hi], self.v[lo:hi]


def make_inputs(variant: Variant, case: Case, device: torch.device | str) -> Inputs:
    """Random tensors for `case` on `device`, reproducible from case.seed."""
    g = torch.Generator(device="cpu").manual_seed(case.seed)
    q_dtype, kv_dtype, d = DTYPES[variant.q_dtype], DTYPES[variant.kv_dtype], variant.head_dim
    hq, hkv = case.num_qo_heads, case.num_kv_heads
    q_scale = 4.0 if case.soft_cap else 1.0  # push logits past the cap so the soft-cap matters
    q = (q_scale * torch.randn(sum(case.q_lens), hq, d, generator=g)).to(q_dtype)
    fp8 = variant.kv_dtype.startswith("fp8")
    k_scale, v_scale = (0.5 + torch.rand(2, generator=g)).tolist() if fp8 else (1.0, 1.0)
    qo_indptr = _indptr(case.q_lens)
    if case.paged:
        pages_per_request = [-(-n // case.page_size) for n in case.kv_lens]
        num_pages = sum(pages_per_request) + 3  # spare pages that no request owns
        kv_indices = torch.randperm(num_pages, generator=g)[: sum(pages_per_request)].int()
        kv_indptr = _indptr(pages_per_request)
        kv_last_page_len = torch.tensor(
            [(n - 1) % case.page_size + 1 if n else 0 for n in case.kv_lens], dtype=torch.int32
        )
        nhd = case.kv_layout == "NHD"
        shape = (num_pages, case.page_size, hkv, d) if nhd else (num_pages, hkv, case.page_size, d)
    else:
        kv_indices = kv_last_page_len = None
        kv_indptr = _indptr(case.kv_lens)
        shape = (sum(case.kv_lens), hkv, d)
    k = torch.randn(shape, generator=g).to(kv_dtype)
    v = torch.randn(shape, generator=g).to(kv_dtype)
    masks = []
    if variant.mask == "custom":
        lens = zip(case.q_lens, case.kv_lens, strict=True)
        masks = [torch.rand(ql, kl, generator=g) < 0.7 for ql, kl in lens]
    return Inputs(
        q=q.to(device),
        k=k.to(device),
        v=v.to(device),
        qo_indptr=qo_indptr.to(device),
        kv_indptr=kv_indptr.to(device),
        kv_indices=_to(kv_indices, device),
        kv_last_page_len=_to(kv_last_page_len, device),
        sm_scale=1.0 / math.sqrt(d),
        k_scale=k_scale,
        v_scale=v_scale,
        alibi_slopes=hooks.alibi_slopes(hq).to(device) if variant.pos == "alibi" else None,
        custom_masks=[m.to(device) for m in masks],
    )


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _indptr(lengths) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def reference_outputs(
    variant: Variant, case: Case, inputs: Inputs, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch's reference o [total_q, Hq, D] and lse [total_q, Hq], computed in `dtype`."""
    outs, lses = [], []
    for r, q_len in enumerate(case.q_lens):
        lo = int(inputs.qo_indptr[r])
        k, v = inputs.request_kv(case, r)
        o, lse = reference.attention(
            inputs.q[lo : lo + q_len],
            k,
            v,
            mask=variant.mask,
            pos=variant.pos,
            sm_scale=inputs.sm_scale,
            soft_cap=case.soft_cap or None,
            window_left=case.window_left,
            custom_mask=inputs.custom_masks[r] if inputs.custom_masks else None,
            alibi_slopes=inputs.alibi_slopes,
            k_scale=inputs.k_scale,
            v_scale=inputs.v_scale,
            dtype=dtype,
        )
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)
