# The compiled part is cffi's (batpak/_build.py); everything else is in
# pyproject.toml.
from setuptools import setup

setup(cffi_modules=["batpak/_build.py:ffibuilder"])
