"""Option precedence: command line > environment > [tool.flashinfer-build] > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashinfer_build.wheelbuild.errors import ConfigError
from flashinfer_build.wheelbuild.options import BuildOptions, resolve

PYPROJECT = """
[tool.flashinfer-build]
preset = "ci"
arch = ["sm80"]
jobs = 3
build-dir = "out/pyproject"
keep-going = true
"""


@pytest.fixture
def pyproject(tmp_path) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    return path


def test_defaults(tmp_path):
    options = resolve({}, {"HOME": str(tmp_path)}, None)
    assert options.matrix == "default" and options.archs == ("sm90a", "sm80")
    assert (
        options.build_dir == Path("build") and options.cache_dir == tmp_path / ".cache" / "flashinfer-build"
    )
    assert not options.keep_going and not options.dry_run and not options.lineinfo
    assert options.csrc_dir == BuildOptions().csrc_dir and (options.csrc_dir / "api.h").is_file()


def test_pyproject_over_defaults(pyproject):
    options = resolve({}, {}, pyproject)
    assert (options.matrix, options.archs, options.jobs, options.keep_going) == ("ci", ("sm80",), 3, True)
    assert options.build_dir == Path("out/pyproject")


def test_environment_over_pyproject(pyproject):
    env = {
        "FLASHINFER_BUILD_PRESET": "full",
        "FLASHINFER_BUILD_ARCH": "sm90a,sm80",
        "FLASHINFER_BUILD_JOBS": "5",
        "FLASHINFER_BUILD_KEEP_GOING": "0",
        "XDG_CACHE_HOME": "/xdg",
    }
    options = resolve({}, env, pyproject)
    assert (options.matrix, options.archs, options.jobs, options.keep_going) == (
        "full",
        ("sm90a", "sm80"),
        5,
        False,
    )
    assert options.build_dir == Path("out/pyproject") and options.cache_dir == Path("/xdg/flashinfer-build")


def test_command_line_over_environment(pyproject):
    env = {
        "FLASHINFER_BUILD_PRESET": "full",
        "FLASHINFER_BUILD_JOBS": "5",
        "FLASHINFER_BUILD_ONLY": "decode_*",
    }
    cli = {"matrix": "default", "jobs": 1, "only": "merge_*,prefill_*", "archs": "sm90a", "build_dir": "b"}
    options = resolve(cli, env, pyproject)
    assert (options.matrix, options.jobs, options.archs) == ("default", 1, ("sm90a",))
    assert options.only == ("merge_*", "prefill_*") and options.build_dir == Path("b")


def test_options_are_frozen_and_keyword_only():
    with pytest.raises(TypeError):
        BuildOptions("ci")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        BuildOptions().jobs = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "cli, env, message",
    [
        ({"archs": "sm70"}, {}, "unknown arch 'sm70'"),
        ({}, {"FLASHINFER_BUILD_JOBS": "many"}, "jobs .from the environment.: expected an integer"),
        ({"jobs": 0}, {}, "jobs must be at least 1"),
        ({}, {"FLASHINFER_BUILD_KEEP_GOING": "perhaps"}, "expected a boolean"),
    ],
)
def test_bad_values_are_config_errors(cli, env, message):
    with pytest.raises(ConfigError, match=message):
        resolve(cli, env, None)


def test_unknown_pyproject_keys_are_named(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.flashinfer-build]\nbuild_dir = "x"\n')
    with pytest.raises(ConfigError, match="unknown .tool.flashinfer-build. keys .'build_dir'."):
        resolve({}, {}, path)


def test_sm90_prefill_mainloop_is_on_unless_turned_off(pyproject, tmp_path):
    assert resolve({}, {}, pyproject).sm90_prefill_mainloop
    env = {"FLASHINFER_BUILD_SM90_PREFILL_MAINLOOP": "0"}
    assert not resolve({}, env, pyproject).sm90_prefill_mainloop
    assert resolve({"sm90_prefill_mainloop": True}, env, pyproject).sm90_prefill_mainloop
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.flashinfer-build]\nsm90-prefill-mainloop = false\n")
    assert not resolve({}, {}, path).sm90_prefill_mainloop
