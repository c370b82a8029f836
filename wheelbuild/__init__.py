"""Toolchain discovery, source generation, ninja builds, the cache and wheel assembly."""
