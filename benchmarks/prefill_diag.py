"""Small prefill cases that tell a wrong MMA layout from a wrong softmax, for a new mainloop's first run.

    python benchmarks/prefill_diag.py [--packs LABEL=DIR,...] [--variant prefill_sm90a_bf16_hd128]

One request, one head, 128 queries over `kv` keys (one tile of the 128-row CTA), ragged KV. For each
pack and case it prints ||o - ref|| / ||ref|| against a float32 reference, and, where that is over
2e-2, the error of each 16-row x 16-column block of o, so that a wrong row or column map shows as a
pattern:
- random: q, k, v standard normal (the ordinary case);
- uniform_p: q = 0, so P is uniform over the visible keys and o is the mean of their v rows: only
  the P V product and the V operand's layout are exercised, not S;
- p_probe: v is the identity (kv = head_dim keys), so o = softmax(S) itself: S, the mask and the
  softmax are exercised and P V is a plain copy;
- one_key: k and v random but only one key (kv = 1): o must equal v[0] in every row.
The launch uses the kernel's own work list (one item) and poisons o before it, so unwritten elements
show as NaN.
"""

from __future__ import annotations

import argparse
import os

import torch
from flashinfer_build.kernels import accuracy, loader, ops, reference
from flashinfer_build.variants import parse_id


def use_pack(directory: str) -> None:
    os.environ["FLASHINFER_BUILD_PACK"] = directory
    loader._packs_for_device.cache_clear()
    loader._find_kernel.cache_clear()


def ref_o(variant, q, k, v) -> torch.Tensor:
    return reference.attention(q, k, v, mask=variant.mask)[0]


def run_case(variant, q, k, v) -> torch.Tensor:
    device = q.device
    qn, kn = q.shape[0], k.shape[0]
    o = accuracy.poisoned_like(q)
    work = torch.tensor([[0, 0, qn, 0, kn, -1]], dtype=torch.int32, device=device)
    ops.attention(
        variant,
        q,
        k,
        v,
        o,
        qo_indptr=torch.tensor([0, qn], dtype=torch.int32, device=device),
        kv_indptr=torch.tensor([0, kn], dtype=torch.int32, device=device),
        work=work,
    )
    torch.cuda.synchronize()
    return o


def block_errors(o, ref, block: int = 16) -> str:
    err = (o.float() - ref).abs()[:, 0]  # [q, d]
    err = torch.nan_to_num(err, nan=99.0)
    qn, d = err.shape
    grid = err[: qn // block * block, : d // block * block].reshape(qn // block, block, d // block, block)
    grid = grid.amax(dim=(1, 3))
    return "\n".join("    " + " ".join(f"{x:5.2f}" for x in row) for row in grid.tolist())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--packs", default="")
    parser.add_argument("--variant", default="prefill_sm90a_bf16_hd128")
    args = parser.parse_args()
    packs = dict(item.split("=", 1) for item in args.packs.split(",") if item) or {"default": None}
    variant = parse_id(args.variant)
    device = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[variant.q_dtype]
    d = variant.head_dim
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen).to(dtype)

    cases = {
        "random_kv128": (randn(128, 1, d), randn(128, 1, d), randn(128, 1, d)),
        "random_kv300": (randn(128, 1, d), randn(300, 1, d), randn(300, 1, d)),
        "uniform_p": (torch.zeros(128, 1, d, device=device, dtype=dtype), randn(128, 1, d), randn(128, 1, d)),
        "p_probe": (
            randn(128, 1, d) * 2,
            randn(d, 1, d),
            torch.eye(d, device=device, dtype=dtype).unsqueeze(1),
        ),
        "one_key": (randn(128, 1, d), randn(1, 1, d), randn(1, 1, d)),
    }
    for label, directory in packs.items():
        if directory:
            use_pack(directory)
        with loader.pinned_arch(variant.arch):
            for name, (q, k, v) in cases.items():
                ref = ref_o(variant, q, k, v)
                try:
                    o = run_case(variant, q, k, v)
                except Exception as e:  # report and go on: the other cases still tell something
                    print(f"{label:>8} {name:>14}: {type(e).__name__}: {e}")
                    continue
                unwritten = int(accuracy.unwritten(o).sum())
                rel = ((o.float() - ref).norm() / ref.norm()).item()
                nans = int(o.isnan().sum())
                print(f"{label:>8} {name:>14}: rel err {rel:.3e}, unwritten {unwritten}, nan {nans}")
                if not rel < 2e-2:
                    print("  max |err| per 16x16 block (rows: queries, columns: head dim):")
                    print(block_errors(o, ref))


if __name__ == "__main__":
    main()
