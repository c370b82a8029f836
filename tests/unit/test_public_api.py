"""The user-facing names resolve from flashinfer_build.kernels, and the build side stays torch-free."""

import subprocess
import sys

import pytest
from flashinfer_build import kernels


@pytest.mark.parametrize("name", kernels.__all__)
def test_public_names_resolve(name):
    assert callable(getattr(kernels, name))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        kernels.nonesuch  # noqa: B018


def test_build_side_does_not_import_torch():
    code = (
        "import sys; import flashinfer_build.kernels.abi, flashinfer_build.wheelbuild.manifest; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
