"""Builds the compiled core `syncengine._native` (Cython + plain C).

SYNCENGINE_DEBUG_BUILD=1 builds with assertions and AddressSanitizer/UBSan instead of -O3.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("SYNCENGINE_DEBUG_BUILD") == "1"
if debug:
    cflags = [
        "-O1",
        "-g",
        "-UNDEBUG",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
    ]
    ldflags = ["-fsanitize=address,undefined"]
else:
    cflags = ["-O3", "-DNDEBUG"]
    ldflags = []

blake3_sources = sorted(
    os.path.join("csrc", "blake3", f)
    for f in os.listdir(os.path.join("csrc", "blake3"))
    if f.endswith(".c") and not f.startswith(("bench", "test"))
)

native = Extension(
    "syncengine._native",
    sources=["csrc/_native.pyx", "csrc/se_bindex.c", "csrc/se_cdc.c", "csrc/se_filehash.c", *blake3_sources],
    include_dirs=["csrc", "csrc/blake3"],
    depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/blake3/*.h") + glob.glob("csrc/*.pxd")),
    extra_compile_args=["-std=gnu11", "-Wall", *cflags],
    extra_link_args=ldflags,
)

setup(
    ext_modules=cythonize(
        [native],
        include_path=["csrc"],
        compiler_directives={"language_level": "3", "binding": False},
        build_dir="build/cython",
    ),
)
