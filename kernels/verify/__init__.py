"""verify: run each selected variant on random cases and compare with the reference (kernels/accuracy.py).

On a GPU every case goes through the user-facing path: the wrappers' plan + run (the scheduler, the
attention kernel and, for split requests, the merge kernel) for decode and prefill, ops.merge_states
for the merge kernels. With device "cpu" the same cases go through the scheduler's plan and its
PyTorch emulation (kernels/emulate.py): no kernels, but the work list's coverage and the merge math
are checked in CI.

The report (`VerifyReport.to_dict`, written by `--json`) has this schema (version in "schema"):
    schema    "flashinfer-build.verify/1"
    seed      int: `--seed` reproduces every case (each variant's cases depend on the seed and its id only)
    device    "cuda" | "cpu";  gpu: name and compute capability, or null;  torch: version string
    factor    the accuracy rule's multiple of PyTorch's own low-precision error
    packs     [{"arch", "path"}] the kernel packs found
    variants  [{"id", "result": "pass" | "fail" | "error", "cases", "max_abs_err", "max_rel_err",
                "tolerance", "seconds", "message",   (errors of the output o, worst case by error/tolerance)
                "case_results": [{"index", "shape": {...case fields...}, "description", "passed", "error",
                                  "output": comparison, "lse": comparison | null}]}]
              comparison = {"max_abs_err", "rel_err", "tolerance", "elements", "unwritten", "nan",
                            "empty_row_errors", "passed"}
    sanitize  null, or [{"tool", "variant", "errors", "exit_code", "log"}]
    summary   {"variants", "passed", "failed", "errors", "cases"}
"""

from __future__ import annotations

import random
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ...variants import Variant
from .. import accuracy, loader
from ..accuracy import Comparison
from .cases import CPU_LIMITS, GPU_LIMITS, Case, Limits, make_inputs, random_cases, reference_outputs
from .merge import random_merge_cases, run_merge_case

SCHEMA = "flashinfer-build.verify/1"
DEFAULT_CASES = 4


@dataclass
class CaseResult:
    index: int
    shape: dict
    description: str
    output: Comparison | None = None
    lse: Comparison | None = None
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and all(c.passed for c in (self.output, self.lse) if c is not None)

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "shape": self.shape,
            "description": self.description,
            "passed": self.passed,
            "error": self.error,
            "output": self.output.to_dict() if self.output else None,
            "lse": self.lse.to_dict() if self.lse else None,
        }


@dataclass
class VariantResult:
    id: str
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def result(self) -> str:
        if any(c.error for c in self.cases):
            return "error"
        return "pass" if all(c.passed for c in self.cases) else "fail"

    @property
    def worst(self) -> Comparison | None:
        """The output's errors over all cases (the lse's are in each case's result and in `message`)."""
        comparisons = [r.output for r in self.cases if r.output is not None]
        return accuracy.merge(comparisons) if comparisons else None

    @property
    def message(self) -> str:
        for c in self.cases:
            if c.error:
                return f"case {c.index} ({c.description}): {c.error.splitlines()[-1]}"
            for name, cmp in (("o", c.output), ("lse", c.lse)):
                if cmp is not None and not cmp.passed:
                    return f"case {c.index} ({c.description}): {name}: {cmp.problem()}"
        return ""

    def to_dict(self) -> dict:
        worst = self.worst
        return {
            "id": self.id,
            "result": self.result,
            "cases": len(self.cases),
            "max_abs_err": worst.max_abs_err if worst else None,
            "max_rel_err": worst.rel_err if worst else None,
            "tolerance": worst.tolerance if worst else None,
            "seconds": round(self.seconds, 3),
            "message": self.message,
            "case_results": [c.to_dict() for c in self.cases],
        }


@dataclass
class VerifyReport:
    seed: int
    device: str
    factor: float
    gpu: str | None = None
    packs: list[dict] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    sanitize: list[dict] | None = None

    @property
    def passed(self) -> bool:
        return all(v.result == "pass" for v in self.variants) and not any(
            s["errors"] for s in self.sanitize or []
        )

    def to_dict(self) -> dict:
        results = [v.result for v in self.variants]
        return {
            "schema": SCHEMA,
            "seed": self.seed,
            "device": self.device,
            "gpu": self.gpu,
            "torch": torch.__version__,
            "factor": self.factor,
            "packs": self.packs,
            "variants": [v.to_dict() for v in self.variants],
            "sanitize": self.sanitize,
            "summary": {
                "variants": len(results),
                "passed": results.count("pass"),
                "failed": results.count("fail"),
                "errors": results.count("error"),
                "cases": sum(len(v.cases) for v in self.variants),
            },
        }


def new_seed() -> int:
    return secrets.randbelow(2**31)


def variant_rng(seed: int, variant: Variant) -> random.Random:
    """Each variant's cases depend on the run's seed and its own id only, so `--seed S --only ID`
    reproduces exactly the failing variant's cases."""
    return random.Random(f"{seed}:{variant.id}")


ProgressFn = Callable[[str, int, int], None]  # (variant id, cases done, cases of this variant)


def verify(
    variants: list[Variant],
    *,
    device: str = "cuda",
    seed: int | None = None,
    cases: int = DEFAULT_CASES,
    factor: float = accuracy.DEFAULT_FACTOR,
    limits: Limits | None = None,
    on_progress: ProgressFn | None = None,
) -> VerifyReport:
    """Run `cases` random cases per variant on `device` ("cuda": kernels; "cpu": scheduler emulation).

    Environment problems (no GPU, no fitting pack) are for the caller to check first (see
    kernels/verify/env.py); failures of one variant are recorded and the others still run."""
    seed = new_seed() if seed is None else seed
    report = VerifyReport(seed=seed, device=device, factor=factor)
    limits = limits or (CPU_LIMITS if device == "cpu" else GPU_LIMITS)
    for variant in variants:
        result = VariantResult(variant.id)
        start = time.monotonic()
        rng = variant_rng(seed, variant)
        if variant.family == "merge":
            todo = [(c, c.describe()) for c in random_merge_cases(rng, cases)]
        else:
            todo = [(c, c.describe()) for c in random_cases(variant, rng, cases, limits)]
        for index, (case, description) in enumerate(todo):
            outcome = CaseResult(index, case.to_dict(), description)
            try:
                with loader.pinned_arch(variant.arch if device != "cpu" else None):
                    outcome.output, outcome.lse = _run_case(variant, case, device, factor)
            except Exception as e:  # one broken case must not hide the others; the report names it
                outcome.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"
            result.cases.append(outcome)
            if on_progress:
                on_progress(variant.id, index + 1, len(todo))
        result.seconds = time.monotonic() - start
        report.variants.append(result)
    return report


def _run_case(variant: Variant, case, device: str, factor: float) -> tuple[Comparison, Comparison]:
    if variant.family == "merge":
        return run_merge_case(variant, case, device, factor)
    x = make_inputs(variant, case, device)
    if device == "cpu":
        from .run import run_emulated

        # The emulation computes in float64; allowing it float32's error still catches any key it
        # misses or counts twice, which moves the output by far more.
        return compare_outputs(variant, case, x, *run_emulated(variant, case, x), factor, torch.float32)
    from .run import run_wrappers

    return compare_outputs(variant, case, x, *run_wrappers(variant, case, x), factor)


def compare_outputs(
    variant: Variant, case: Case, x, o, lse, factor: float, low_dtype: torch.dtype | None = None
) -> tuple[Comparison, Comparison]:
    """Compare o [total_q, Hq, D] and lse [total_q, Hq] with the reference computed in float64, the
    tolerance from the reference computed in `low_dtype` (default: o's dtype)."""
    ref_o, ref_lse = reference_outputs(variant, case, x, torch.float64)
    low_o, low_lse = reference_outputs(variant, case, x, low_dtype or o.dtype)
    empty = ref_lse == float("-inf")
    out = accuracy.compare(o, ref_o, low_o, empty_rows=empty, factor=factor)
    lse_cmp = accuracy.compare(
        lse, ref_lse, low_lse, empty_rows=empty, empty_value=float("-inf"), factor=factor
    )
    return out, lse_cmp
