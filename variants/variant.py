"""One attention variant: the axis values that change a kernel's code shape, and its canonical id."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields

# Axis name -> allowed values, in the order `list` shows them. The first value is the default.
AXES: dict[str, tuple] = {
    "family": ("decode", "prefill", "merge"),
    "arch": ("sm90a", "sm80"),
    "q_dtype": ("bf16", "fp16"),
    "kv_dtype": ("bf16", "fp16", "fp8e4m3", "fp8e5m2"),
    "head_dim": (128, 64, 256),
    "mask": ("none", "causal", "custom", "sliding_window"),
    "pos": ("none", "rope", "alibi"),
    "soft_cap": (False, True),
}

FP8_DTYPES = ("fp8e4m3", "fp8e5m2")


class InvalidVariant(ValueError):
    """A combination of axis values that no kernel implements; the message says why."""


# Each rule: (reason, predicate that is True for an invalid variant). The reason is what users read.
RULES: tuple[tuple[str, object], ...] = (
    (
        "16-bit KV is read in the query's dtype: kv_dtype must equal q_dtype or be an fp8 type",
        lambda v: v.kv_dtype not in FP8_DTYPES and v.kv_dtype != v.q_dtype,
    ),
    (
        "decode has one query at the end of the KV, so a causal mask is the same as none and custom "
        "masks are a prefill feature: use mask 'none' or 'sliding_window'",
        lambda v: v.family == "decode" and v.mask in ("causal", "custom"),
    ),
    (
        "prefill reads K/V tiles in the query's 16-bit dtype for mma.sync; fp8 KV is a decode feature "
        "(prefill over an fp8 cache: convert the request's pages first)",
        lambda v: v.family == "prefill" and v.kv_dtype in FP8_DTYPES,
    ),
    (
        "merge-states kernels combine finished partial outputs: they take no KV dtype, head dim, mask, "
        "positional encoding or soft-cap",
        lambda v: (
            v.family == "merge"
            and (
                v.kv_dtype != v.q_dtype
                or v.head_dim != 0
                or v.mask != "none"
                or v.pos != "none"
                or v.soft_cap
            )
        ),
    ),
    (
        "attention kernels are compiled per head dim: head_dim must be one of 64, 128, 256",
        lambda v: v.family != "merge" and v.head_dim not in AXES["head_dim"],
    ),
)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """Frozen axis values of one compiled kernel. Construction validates against RULES."""

    family: str
    arch: str
    q_dtype: str = "bf16"
    kv_dtype: str = ""  # "" means: same as q_dtype
    head_dim: int = 128
    mask: str = "none"
    pos: str = "none"
    soft_cap: bool = False

    def __post_init__(self) -> None:
        if self.kv_dtype == "":
            object.__setattr__(self, "kv_dtype", self.q_dtype)
        if self.family == "merge" and self.head_dim == 128:
            object.__setattr__(self, "head_dim", 0)
        for axis, allowed in AXES.items():
            value = getattr(self, axis)
            if axis == "head_dim":
                if not isinstance(value, int):
                    raise InvalidVariant(f"head_dim must be an int, got {value!r}")
                continue
            if value not in allowed:
                raise InvalidVariant(f"{axis}={value!r} is not one of {', '.join(map(str, allowed))}")
        reason = invalid_reason(self)
        if reason:
            raise InvalidVariant(f"{self.id}: {reason}")

    @property
    def id(self) -> str:
        """Canonical id, fixed key order, defaults left out: `prefill_sm90a_bf16_hd128_causal_rope`."""
        parts = [self.family, self.arch, self.q_dtype]
        if self.kv_dtype != self.q_dtype:
            parts.append(f"kv{self.kv_dtype}")
        if self.head_dim:
            parts.append(f"hd{self.head_dim}")
        if self.mask != "none":
            parts.append(self.mask)
        if self.pos != "none":
            parts.append(self.pos)
        if self.soft_cap:
            parts.append("softcap")
        return "_".join(parts)

    @property
    def hash(self) -> str:
        """Content hash of the axis values (12 hex digits); the build cache adds sources and flags."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def symbol(self) -> str:
        """Prefix of the variant's extern "C" entry points: `fib_<id>_run`, `fib_<id>_info`."""
        return f"fib_{self.id}"

    def to_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}


def invalid_reason(v: Variant) -> str | None:
    for reason, is_invalid in RULES:
        if is_invalid(v):
            return reason
    return None


_ID_TOKEN = re.compile(r"^(kv(?P<kv>fp16|bf16|fp8e4m3|fp8e5m2)|hd(?P<hd>\d+)|(?P<word>[a-z_0-9]+))$")


def parse_id(variant_id: str) -> Variant:
    """Inverse of Variant.id. Raises InvalidVariant naming the token it could not read."""
    family, _, rest = variant_id.partition("_")
    arch, _, rest = rest.partition("_")
    q_dtype, _, rest = rest.partition("_")
    kwargs: dict = {"family": family, "arch": arch, "q_dtype": q_dtype}
    if family == "merge":
        kwargs["head_dim"] = 0
    rest = rest.replace("sliding_window", "sliding-window")
    for token in filter(None, rest.split("_")):
        token = token.replace("sliding-window", "sliding_window")
        m = _ID_TOKEN.match(token)
        if m and m["kv"]:
            kwargs["kv_dtype"] = m["kv"]
        elif m and m["hd"]:
            kwargs["head_dim"] = int(m["hd"])
        elif token in AXES["mask"]:
            kwargs["mask"] = token
        elif token in AXES["pos"]:
            kwargs["pos"] = token
        elif token == "softcap":
            kwargs["soft_cap"] = True
        else:
            raise InvalidVariant(f"{variant_id!r}: unknown id token {token!r}")
    v = Variant(**kwargs)
    if v.id != variant_id:
        raise InvalidVariant(f"{variant_id!r} is not canonical; the canonical id is {v.id!r}")
    return v


AXIS_NAMES = tuple(f.name for f in fields(Variant))
