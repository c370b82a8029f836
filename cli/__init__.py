"""The `flashinfer-build` command line: thin click commands over library functions."""
