"""Prefill TFLOP/s of the built prefill kernels beside PyTorch SDPA's FLASH_ATTENTION and CUDNN backends.

    python benchmarks/prefill.py [--head-dims 64,128,256] [--tokens 2048,8192] [--heads 32]
                                 [--dtype bf16] [--no-sdpa] [--packs LABEL=DIR,...] [--repeat N]
                                 [--json FILE]

Shape (issue 3): one request of N query tokens over the same N keys (ragged KV, [N, heads, D]),
32 query and 32 KV heads, causal and not. FLOP = 4 * heads * D per visible (query, key) pair, as
`flashinfer-build bench` counts them: N * N pairs, N * (N + 1) / 2 under the causal mask. Our work
list has one item per 128-row query tile, the heaviest (causal: last) tiles of each head first, so
the last wave holds the cheapest tiles. SDPA runs on the same tensors as [1, heads, N, D] views.
Times are CUDA-event medians after a warm-up (kernels/bench/timing.py), on inputs rotated so that
repeated calls do not find them in L2. `err` is our output's largest absolute difference from a
float32 reference over the last 128 query rows (every head), `flash err` the same for SDPA's
FLASH_ATTENTION: a wrong kernel shows there before its time means anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch
import torch.nn.functional as F
from flashinfer_build.kernels import loader, ops
from flashinfer_build.kernels.bench.timing import rotation_sets, time_calls
from flashinfer_build.variants import Variant

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(tokens: int, heads: int, head_dim: int, causal: bool) -> float:
    pairs = tokens * (tokens + 1) // 2 if causal else tokens * tokens
    return 4 * pairs * heads * head_dim


CHECK_ROWS = 128


def reference_tail(q, k, v, causal: bool) -> torch.Tensor:
    """float32 attention output of the last CHECK_ROWS queries, [rows, heads, D]."""
    tokens, _, head_dim = q.shape
    qt = q[-CHECK_ROWS:].float().transpose(0, 1)  # [heads, rows, D]
    s = qt @ k.float().permute(1, 2, 0) / head_dim**0.5  # [heads, rows, tokens]
    if causal:
        rows = torch.arange(tokens - CHECK_ROWS, tokens, device=q.device)
        s.masked_fill_(torch.arange(tokens, device=q.device)[None, :] > rows[:, None], float("-inf"))
    return (s.softmax(-1) @ v.float().transpose(0, 1)).transpose(0, 1)


def work_list(tokens: int, tile_q: int, device) -> torch.Tensor:
    """One item per tile of query rows over every key, last tile first (causal: heaviest first)."""
    starts = range(0, tokens, tile_q)
    items = [[0, b, min(b + tile_q, tokens), 0, tokens, -1] for b in reversed(starts)]
    return torch.tensor(items, dtype=torch.int32, device=device)


def input_sets(tokens, heads, head_dim, dtype, device) -> list[tuple[torch.Tensor, ...]]:
    set_bytes = 4 * tokens * heads * head_dim * dtype.itemsize
    props = torch.cuda.get_device_properties(device)
    count = rotation_sets(set_bytes, props.L2_cache_size, torch.cuda.mem_get_info()[0])
    return [
        tuple(torch.randn(tokens, heads, head_dim, device=device, dtype=dtype) for _ in range(4))
        for _ in range(count)
    ]


def ours_us(variant, sets, tokens, device, ref) -> tuple[float, float]:
    """Median time of our kernel and its error on the first input set (o poisoned with NaN first)."""
    indptr = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    work = work_list(tokens, ops.kernel_info(variant, device).cta_tile_q, device)
    calls = []
    for q, k, v, o in sets:
        run = ops.prepare_attention(variant, q, k, v, o, kv_indptr=indptr, qo_indptr=indptr, work=work)
        calls.append(lambda run=run, q=q, k=k, v=v, o=o: run.launch(q, k, v, o))
    o = sets[0][3]
    o.fill_(float("nan"))
    calls[0]()
    err = (o[-CHECK_ROWS:].float() - ref).abs().max().item()  # NaN (unwritten or computed) stays NaN
    if o.isnan().any():
        err = float("nan")
    return time_calls(calls).median_us, err


def sdpa_us(backend_name, sets, causal, ref) -> tuple[float | None, float]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)
    calls = []
    for q, k, v, _ in sets:
        qt, kt, vt = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))

        def call(qt=qt, kt=kt, vt=vt):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

        calls.append(call)
    try:
        out = calls[0]()
    except RuntimeError:
        return None, float("nan")
    err = (out[0, :, -CHECK_ROWS:].transpose(0, 1).float() - ref).abs().max().item()
    return time_calls(calls).median_us, err


def use_pack(directory: str) -> None:
    """Makes the loader find kernels in `directory` from now on (its discovery is cached per process)."""
    os.environ["FLASHINFER_BUILD_PACK"] = directory
    loader._packs_for_device.cache_clear()
    loader._find_kernel.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--head-dims", default="64,128,256")
    parser.add_argument("--tokens", default="2048,8192")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--no-sdpa", action="store_true")
    parser.add_argument(
        "--packs",
        default="",
        help="LABEL=DIR,...: time each build directory's kernels on the same inputs (default: the pack "
        "the loader finds, labelled 'ours')",
    )
    parser.add_argument("--repeat", type=int, default=1, help="time each pack this many times, interleaved")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    packs = dict(item.split("=", 1) for item in args.packs.split(",") if item)
    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    rows = []
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {datetime.date.today()}")
    print("TFLOP/s (4 * heads * D per visible pair); err: max |o - ref| over the last 128 rows")
    header = ("hd", "causal", "tokens", "method", "TFLOP/s", "/ flash", "err")
    widths = (4, 6, 6, 10, 8, 8, 9)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for head_dim in map(int, args.head_dims.split(",")):
        for causal in (False, True):
            variant = Variant(
                family="prefill",
                arch="sm90a",
                q_dtype=args.dtype,
                head_dim=head_dim,
                mask="causal" if causal else "none",
            )
            for tokens in map(int, args.tokens.split(",")):
                sets = input_sets(tokens, args.heads, head_dim, dtype, device)
                work = flops(tokens, args.heads, head_dim, causal)
                ref = reference_tail(*sets[0][:3], causal)
                row = {"head_dim": head_dim, "causal": causal, "tokens": tokens, "heads": args.heads}
                for name, backend in (("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")):
                    row[f"{name}_us"], row[f"{name}_err"] = (
                        (None, float("nan")) if args.no_sdpa else sdpa_us(backend, sets, causal, ref)
                    )
                for rep in range(args.repeat):
                    for label, directory in packs.items() or {"ours": None}.items():
                        if directory is not None:
                            use_pack(directory)
                        key = label if args.repeat == 1 else f"{label}#{rep + 1}"
                        try:
                            row[f"{key}_us"], row[f"{key}_err"] = ours_us(variant, sets, tokens, device, ref)
                        except loader.PackError:  # this pack was built without the variant
                            row[f"{key}_us"], row[f"{key}_err"] = None, float("nan")
                flash_us = row["flash_us"]
                for key in [k[:-3] for k in row if k.endswith("_us")]:
                    us = row[f"{key}_us"]
                    row[f"{key}_tflops"] = work / (us * 1e-6) / 1e12 if us else float("nan")
                    ratio = flash_us / us if us and flash_us else float("nan")
                    print(
                        f"{head_dim:4d} {str(causal):>6} {tokens:6d} {key:>10} {row[f'{key}_tflops']:8.1f} "
                        f"{ratio:8.2f} {row[f'{key}_err']:9.2e}",
                        flush=True,
                    )
                rows.append(row)
                del sets, ref
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
