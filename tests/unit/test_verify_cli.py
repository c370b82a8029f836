"""`flashinfer-build verify` and `bench` through click's CliRunner and main()'s exit codes, on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from flashinfer_build.cli.main import cli, main
from flashinfer_build.kernels import verify
from flashinfer_build.kernels.verify import run as verify_run

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml or build/ here
    return CliRunner()


def test_cpu_verify_of_the_ci_preset_passes_and_writes_the_report(runner, tmp_path):
    seed = verify.new_seed()
    path = tmp_path / "report.json"
    args = ["--device", "cpu", "--preset", "ci", "--arch", "sm90a", "--cases", "2", "--seed", str(seed)]
    result = runner.invoke(cli, ["verify", *args, "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "all 4 variants passed" in result.output and "decode_sm90a_bf16_hd128" in result.output
    data = json.loads(path.read_text())
    assert data["schema"] == verify.SCHEMA and data["seed"] == seed and data["device"] == "cpu"
    assert data["summary"]["passed"] == 4 and data["summary"]["cases"] == 8


def test_cpu_verify_runs_arch_twins_once(runner):
    args = ["--device", "cpu", "--preset", "ci", "--only", "merge_*", "--cases", "1"]
    result = runner.invoke(cli, ["verify", *args])
    assert result.exit_code == 0, result.output
    assert "all 1 variants passed" in result.output


def test_a_failing_variant_exits_1(monkeypatch, capsys):
    def wrong(variant, case, x):
        o, lse = real(variant, case, x)
        return o + 1.0, lse

    real = verify_run.run_emulated
    monkeypatch.setattr(verify_run, "run_emulated", wrong)
    seed = verify.new_seed()
    code = main(
        [
            "verify",
            "--device",
            "cpu",
            "--preset",
            "ci",
            "--only",
            "prefill_*",
            "--arch",
            "sm90a",
            "--cases",
            "1",
            "--seed",
            str(seed),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"--seed {seed} --only prefill_sm90a_bf16_hd128_causal" in err


@NO_GPU
def test_no_gpu_is_an_environment_error():
    assert main(["verify", "--preset", "ci"]) == 2
    assert main(["bench", "--workloads", "decode"]) == 2


def test_usage_errors_exit_2():
    assert main(["verify", "--device", "cpu", "--sanitize"]) == 2
    assert main(["verify", "--device", "cpu", "--only", "no_such_variant*"]) == 2
    assert main(["verify", "--device", "tpu"]) == 2
    assert main(["bench", "--baselines", "sdpa-math"]) == 2
    assert main(["bench", "--shape", "decode:batch=two"]) == 2
    assert main(["bench", "--workloads", "decode,nonsense"]) == 2


@pytest.fixture
def fake_pack(tmp_path, monkeypatch):
    """A pack manifest holding three sm90a variants (no shared object: --device cpu never opens it)."""
    from flashinfer_build.kernels import abi

    pack = tmp_path / "pack" / "sm90a"
    pack.mkdir(parents=True)
    ids = ["merge_sm90a_bf16", "decode_sm90a_bf16_hd128", "prefill_sm90a_bf16_hd128_causal"]
    manifest = {"abi_version": abi.ABI_VERSION, "arch": "sm90a", "variants": [{"id": i} for i in ids]}
    (pack / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("FLASHINFER_BUILD_PACK", str(pack.parent))
    return pack


def test_built_selects_what_the_packs_hold_filtered_by_only(runner, fake_pack):
    result = runner.invoke(
        cli, ["verify", "--device", "cpu", "--built", "--only", "decode_*", "--cases", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "all 1 variants passed" in result.output and "decode_sm90a_bf16_hd128" in result.output
    assert "prefill_" not in result.output


def test_built_refuses_a_preset_and_an_empty_selection(fake_pack, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["verify", "--device", "cpu", "--built", "--preset", "ci"]) == 2
    assert "give no --preset or --matrix" in " ".join(capsys.readouterr().err.split())
    assert main(["verify", "--device", "cpu", "--built", "--arch", "sm80"]) == 2
    assert "Packs found: sm90a (3 variants" in " ".join(capsys.readouterr().err.split())
