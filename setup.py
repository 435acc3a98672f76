"""Packaging: the ``vmblock`` package, ``native/`` installed as ``vmblock.native``, the CLI."""

import re

from setuptools import find_namespace_packages, setup

with open("vmblock/__init__.py", encoding="utf-8") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE).group(1)

setup(
    name="vmblock",
    version=VERSION,
    description="A VM-aware iSCSI block target",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Namespace discovery: a sub-package is installed even before it has an __init__.py.
    packages=find_namespace_packages(include=["vmblock", "vmblock.*"], exclude=["*.__pycache__"])
    + ["vmblock.native"],
    package_dir={"vmblock.native": "native"},
    install_requires=[
        "numpy", "numba", "rocksdict", "pyroute2", "click", "aiohttp", "uvloop", "crc32c",
        "prometheus-client", "rich", "matplotlib",
    ],
    extras_require={
        # hypervisor connectors (vmblock hypervisor, vm import): builds against libvirt-dev
        "libvirt": ["libvirt-python", "rich"],
        "report": ["matplotlib"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "libcachesim", "mfusepy",
                 "libvirt-python", "rich", "matplotlib"],
    },
    entry_points={"console_scripts": ["vmblock = vmblock.cli:main"]},
)
