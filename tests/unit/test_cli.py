"""The command line through click's CliRunner, and main()'s exit codes."""

from __future__ import annotations

import json

import pytest
from buildhelp import FIXTURE_CSRC, RIGHT_IMAGES, fake_pack, fake_toolchain
from click.testing import CliRunner
from flashinfer_build.cli.main import cli, main
from flashinfer_build.variants import load_matrix
from flashinfer_build.wheelbuild import toolchain
from flashinfer_build.wheelbuild.build import plan_build
from flashinfer_build.wheelbuild.errors import ConfigError
from flashinfer_build.wheelbuild.options import BuildOptions
from flashinfer_build.wheelbuild.status import LIST_SCHEMA

VARIANT_KEYS = {
    "id",
    "family",
    "arch",
    "q_dtype",
    "kv_dtype",
    "head_dim",
    "mask",
    "pos",
    "soft_cap",
    "hash",
    "status",
    "built",
    "cached",
    "installed",
}


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pyproject.toml here, and build/ is the test's own
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return CliRunner()


def test_help_lists_the_commands(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("list", "build", "wheel", "doctor"):
        assert f"  {command} " in result.output


def test_list_json_schema(runner, monkeypatch):
    monkeypatch.setattr(toolchain, "discover", lambda env=None: fake_toolchain())
    result = runner.invoke(cli, ["list", "--preset", "ci", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == LIST_SCHEMA and data["matrix"] == "ci" and data["archs"] == ["sm90a", "sm80"]
    assert [v["id"] for v in data["variants"]] == load_matrix("ci").ids()
    assert all(set(v) == VARIANT_KEYS for v in data["variants"])
    counts = data["counts"]
    assert (
        counts["total"]
        == len(data["variants"])
        == sum(counts[s] for s in ("built", "installed", "cached", "missing"))
    )
    assert all(v["status"] == "missing" for v in data["variants"])  # nothing built in this fresh directory


def test_list_shows_built_variants(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain, "discover", lambda env=None: fake_toolchain())
    options = BuildOptions(matrix="ci", only=("merge_sm80*",), archs=("sm80",), cache_dir=tmp_path / "cache")
    (unit,) = plan_build(options, fake_toolchain()).units
    fake_pack(tmp_path / "build" / "sm80", "sm80", RIGHT_IMAGES["sm80"], build_key=unit.key)
    result = runner.invoke(cli, ["list", "--preset", "ci", "--only", "merge_*", "--arch", "sm80"])
    assert result.exit_code == 0, result.output
    assert "merge_sm80_bf16" in result.stdout and "built" in result.stdout and "1 built" in result.stdout
    assert "merge_sm90a_bf16" not in result.stdout
    (tmp_path / "build" / "sm80" / "manifest.json").write_text(
        (tmp_path / "build" / "sm80" / "manifest.json").read_text().replace(unit.key, "f" * 64)
    )
    stale = runner.invoke(cli, ["list", "--preset", "ci", "--only", "merge_*", "--arch", "sm80"])
    assert "missing" in stale.stdout and "0 built" in stale.stdout  # built from other sources: stale


def test_list_installed_json(runner):
    result = runner.invoke(cli, ["list", "--installed", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == LIST_SCHEMA and data["counts"]["packs"] == len(data["packs"])


def test_build_dry_run_prints_units_and_writes_nothing(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain, "discover", lambda env=None: fake_toolchain())
    monkeypatch.setenv("FLASHINFER_BUILD_CSRC_DIR", str(FIXTURE_CSRC))
    result = runner.invoke(cli, ["build", "--preset", "ci", "--dry-run", "--arch", "sm90a"])
    assert result.exit_code == 0, result.output
    assert "would compile merge_sm90a_bf16" in result.output and "/nonexistent/nvcc" in result.output
    assert "skipped" in result.output and "decode" in result.output  # the fixture has no decode template
    assert not (tmp_path / "build").exists()


def test_empty_selection_is_a_config_error(runner, monkeypatch):
    monkeypatch.setattr(toolchain, "discover", lambda env=None: fake_toolchain())
    result = runner.invoke(cli, ["build", "--preset", "ci", "--only", "nothing_*"])
    assert isinstance(result.exception, ConfigError) and "no variant of 'ci' matches" in str(result.exception)


def test_main_maps_errors_to_exit_codes(runner, monkeypatch, tmp_path, capsys):
    assert main(["list", "--preset", "nonesuch"]) == 2
    assert "presets: ci, default, full" in capsys.readouterr().err
    assert main(["build", "--preset", "ci", "--arch", "sm70"]) == 2
    assert "unknown arch 'sm70'" in capsys.readouterr().err

    monkeypatch.setenv("FLASHINFER_BUILD_TOOLCHAIN", "system")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert main(["build", "--preset", "ci", "--only", "merge_*"]) == 3
    err = capsys.readouterr().err
    assert "nvcc not found" in err and 'pip install "flashinfer-build[build]"' in err
    assert main(["list", "--nonsense-flag"]) == 2
    assert main(["--version"]) == 0


def test_doctor_json_reports_toolchain_gpu_and_packs(runner, monkeypatch, tmp_path):
    fake_pack(tmp_path / "build" / "sm90a", "sm90a", RIGHT_IMAGES["sm90a"])
    result = runner.invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"toolchain", "gpu", "packs"} and "present" in data["gpu"]
    assert set(data["toolchain"]) == {"ok", "nvcc", "cutlass", "ninja", "host_compiler"}
    (pack,) = [p for p in data["packs"] if p["origin"] == "build"]
    no_cutlass = {"FLASHINFER_BUILD_CUTLASS_DIR": str(tmp_path / "none")}
    missing = runner.invoke(cli, ["doctor", "--json"], env=no_cutlass)
    parts = json.loads(missing.stdout)["toolchain"]
    assert not parts["ok"] and "nvidia-cutlass" in parts["cutlass"]["error"]
    assert "error" not in parts["host_compiler"]  # one missing part does not hide the others
    assert (pack["arch"], pack["variants"], pack["min_driver_cuda"]) == ("sm90a", 1, "13.0")


def test_a_users_matrix_file(runner, tmp_path):
    matrix = tmp_path / "mine.toml"
    matrix.write_text(
        '[[block]]\nfamily = ["decode"]\narch = ["sm80"]\nhead_dim = [64, 256]\nmask = ["none", "causal"]\n'
    )
    result = runner.invoke(cli, ["list", "--matrix", str(matrix), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [v["id"] for v in data["variants"]] == ["decode_sm80_bf16_hd64", "decode_sm80_bf16_hd256"]
    assert list(data["pruned"].values()) == [2] and "decode has one query" in next(iter(data["pruned"]))
    both = runner.invoke(cli, ["list", "--matrix", str(matrix), "--preset", "ci"])
    assert isinstance(both.exception, ConfigError) and "not both" in str(both.exception)
