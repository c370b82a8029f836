"""The batches bench times: named workload sets, the synthetic serving trace, and user-given shapes.

Sets (`WORKLOAD_SETS`, all bf16 queries, 32 query heads over 8 KV heads, page size 16 unless named):
- decode: batch {1, 16, 64, 256} x KV length {1k, 8k, 32k}, head dim 128, bf16 and fp8 e4m3 KV.
- prefill: one causal or non-causal self-attention of 2k or 8k tokens (query length = KV length) at
  head dims 64, 128 and 256, batched to 16k tokens (8 x 2k, 2 x 8k), ragged KV.
- serving: one continuous-batching step of 64 requests drawn from `chat_trace` (seed 0).
- skewed: 1 request of 32k keys and 63 of 512, decoded with and without split-KV.
- shared_prefix: n = 1, 4, 16 samples decoding after a shared 4k-token prompt, each with a 256-token
  suffix of its own; cascade attention against plain paged decode over the shared pages.
- variants: the hooks at one shape each: soft-cap, ALiBi, sliding window (1024 keys), fused RoPE, on
  4k-token causal prefill and batch-64 x 8k decode.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace

from ...variants import Variant

KINDS = ("decode", "prefill")


@dataclass(frozen=True)
class Workload:
    """One timed batch. page_size 0 means ragged KV (prefill only). With shared_prefix > 0, kv_lens are
    the requests' own suffixes after a prefix of that many keys that all of them see."""

    name: str
    kind: str
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    num_qo_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    q_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    mask: str = "none"
    pos: str = "none"
    soft_cap: float = 0.0
    window_left: int = -1
    page_size: int = 16
    shared_prefix: int = 0
    cascade: bool = False
    split_kv: bool = True
    group: str = "user"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if len(self.q_lens) != len(self.kv_lens) or not self.q_lens:
            raise ValueError(f"{self.name}: q_lens and kv_lens must be non-empty and of equal length")
        if any(not 0 <= q <= kv for q, kv in zip(self.q_lens, self.total_kv_lens, strict=True)):
            raise ValueError(f"{self.name}: every request needs 0 <= q_len <= kv_len")
        if self.kind == "decode" and any(q != 1 for q in self.q_lens):
            raise ValueError(f"{self.name}: decode has one query per request")
        if self.num_qo_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: num_qo_heads must be a multiple of num_kv_heads")
        if self.cascade and not self.shared_prefix:
            raise ValueError(f"{self.name}: cascade needs a shared_prefix")

    @property
    def total_kv_lens(self) -> tuple[int, ...]:
        return tuple(kv + self.shared_prefix for kv in self.kv_lens)

    def variant(self, arch: str = "sm90a") -> Variant:
        """The compiled variant this workload runs (cascade prefixes also use the prefill family)."""
        return Variant(
            family=self.kind,
            arch=arch,
            q_dtype=self.q_dtype,
            kv_dtype=self.kv_dtype,
            head_dim=self.head_dim,
            mask=self.mask,
            pos=self.pos,
            soft_cap=bool(self.soft_cap),
        )

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["q_lens"], d["kv_lens"] = list(self.q_lens), list(self.kv_lens)
        return d


def chat_trace(num_requests: int, *, seed: int = 0, prefill_share: float = 0.125, chunk: int = 512):
    """(q_lens, kv_lens) of one continuous-batching step, shaped like chat serving traces.

    Context lengths are log-normal with a median of 1,500 tokens and sigma 1.2, clipped to [16, 32k]:
    most conversations hold a system prompt and a few turns, a long tail holds pasted documents (the
    shape of ShareGPT/LMSYS-style traces once multi-turn history counts). A `prefill_share` of the
    requests are in a prefill chunk (up to `chunk` new tokens at the end of their context); the rest
    decode one token. Deterministic for a given seed; nothing is downloaded."""
    rng = random.Random(seed)
    q_lens, kv_lens = [], []
    for i in range(num_requests):
        kv = int(min(32768, max(16, rng.lognormvariate(math.log(1500), 1.2))))
        prefilling = i < round(prefill_share * num_requests)
        q_lens.append(min(kv, chunk) if prefilling else 1)
        kv_lens.append(kv)
    order = list(range(num_requests))
    rng.shuffle(order)
    return tuple(q_lens[i] for i in order), tuple(kv_lens[i] for i in order)


def _decode(batch: int, kv: int, kv_dtype: str = "bf16", **kw) -> Workload:
    tag = "" if kv_dtype == "bf16" else f" kv {kv_dtype}"
    return Workload(
        name=f"decode b{batch} kv{kv // 1024}k{tag}",
        kind="decode",
        q_lens=(1,) * batch,
        kv_lens=(kv,) * batch,
        kv_dtype=kv_dtype,
        group="decode",
        **kw,
    )


def _prefill(tokens: int, head_dim: int, causal: bool, total: int = 16384, **kw) -> Workload:
    batch = max(1, total // tokens)
    mask = kw.pop("mask", "causal" if causal else "none")
    name = kw.pop("name", f"prefill {tokens // 1024}k hd{head_dim} {mask}")
    return Workload(
        name=name,
        kind="prefill",
        q_lens=(tokens,) * batch,
        kv_lens=(tokens,) * batch,
        head_dim=head_dim,
        mask=mask,
        page_size=0,
        group=kw.pop("group", "prefill"),
        **kw,
    )


def decode_set() -> list[Workload]:
    return [
        _decode(b, kv, dt)
        for dt in ("bf16", "fp8e4m3")
        for b in (1, 16, 64, 256)
        for kv in (1024, 8192, 32768)
    ]


def prefill_set() -> list[Workload]:
    return [_prefill(t, d, c) for t in (2048, 8192) for d in (64, 128, 256) for c in (True, False)]


def serving_set() -> list[Workload]:
    q_lens, kv_lens = chat_trace(64)
    return [
        Workload(
            name="serving chat-trace 64 req",
            kind="prefill",
            q_lens=q_lens,
            kv_lens=kv_lens,
            mask="causal",
            group="serving",
        )
    ]


def skewed_set() -> list[Workload]:
    kv = (32768,) + (512,) * 63
    return [
        Workload(
            name=f"skewed 1x32k+63x512{'' if split else ' no-split'}",
            kind="decode",
            q_lens=(1,) * 64,
            kv_lens=kv,
            split_kv=split,
            group="skewed",
        )
        for split in (True, False)
    ]


def shared_prefix_set() -> list[Workload]:
    return [
        Workload(
            name=f"shared 4k prefix n={n}{' cascade' if cascade else ' plain'}",
            kind="decode",
            q_lens=(1,) * n,
            kv_lens=(256,) * n,
            shared_prefix=4096,
            cascade=cascade,
            group="shared_prefix",
        )
        for n in (1, 4, 16)
        for cascade in (True, False)
    ]


def variants_set() -> list[Workload]:
    hooks = {
        "softcap": {"soft_cap": 30.0},
        "alibi": {"pos": "alibi"},
        "rope": {"pos": "rope"},
        "window 1024": {"mask": "sliding_window", "window_left": 1024},
    }
    rows = []
    for label, kw in hooks.items():
        name = f"prefill 4k causal {label}"
        rows.append(_prefill(4096, 128, True, total=4096, name=name, group="variants", **kw))
        rows.append(replace(_decode(64, 8192, **kw), name=f"decode b64 kv8k {label}", group="variants"))
    return rows


WORKLOAD_SETS = {
    "decode": decode_set,
    "prefill": prefill_set,
    "serving": serving_set,
    "skewed": skewed_set,
    "shared_prefix": shared_prefix_set,
    "variants": variants_set,
}


def workloads(names) -> list[Workload]:
    unknown = [n for n in names if n not in WORKLOAD_SETS]
    if unknown:
        raise ValueError(f"unknown workload set {unknown}; sets are {', '.join(WORKLOAD_SETS)}")
    return [w for n in names for w in WORKLOAD_SETS[n]()]


_SHAPE_KEYS = {
    "batch": int,
    "kv": int,
    "q": int,
    "tokens": int,
    "hq": int,
    "hkv": int,
    "hd": int,
    "page": int,
    "q_dtype": str,
    "kv_dtype": str,
    "mask": str,
    "pos": str,
    "soft_cap": float,
    "window": int,
    "prefix": int,
    "cascade": bool,
    "split": bool,
    "causal": bool,
}


def parse_shape(text: str) -> Workload:
    """A user's workload: `KIND:key=value,...`, e.g. `decode:batch=32,kv=4096,kv_dtype=fp8e4m3` or
    `prefill:batch=2,tokens=8192,hd=128,causal=true`. Keys: batch, kv, q (prefill query length; default
    kv), tokens (q = kv = tokens), hq, hkv, hd, page (0 = ragged), q_dtype, kv_dtype, mask, pos,
    soft_cap, window, prefix, cascade, split, causal."""
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise ValueError(f"shape {text!r}: start with one of {', '.join(KINDS)} and a colon")
    values: dict = {}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in _SHAPE_KEYS:
            keys = ", ".join(_SHAPE_KEYS)
            raise ValueError(f"shape {text!r}: {item!r} is not key=value with a key among {keys}")
        values[key] = _convert(_SHAPE_KEYS[key], raw.strip(), text)
    batch = values.pop("batch", 1)
    kv = values.pop("tokens", values.pop("kv", 4096))
    q = 1 if kind == "decode" else values.pop("q", kv)
    mask = values.pop("mask", "causal" if values.pop("causal", kind == "prefill") else "none")
    args = dict(
        num_qo_heads=values.pop("hq", 32),
        num_kv_heads=values.pop("hkv", 8),
        head_dim=values.pop("hd", 128),
        page_size=values.pop("page", 16),
        window_left=values.pop("window", -1),
        shared_prefix=values.pop("prefix", 0),
        split_kv=values.pop("split", True),
        mask=mask,
        **values,
    )
    return Workload(name=f"user {text}", kind=kind, q_lens=(q,) * batch, kv_lens=(kv,) * batch, **args)


def _convert(kind: type, raw: str, text: str):
    try:
        if kind is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes")
        return kind(raw)
    except ValueError:
        raise ValueError(f"shape {text!r}: {raw!r} is not a {kind.__name__}") from None
