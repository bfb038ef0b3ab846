"""Builds fastgan and its compiled extension fastgan._C (csrc/).

- C++ sources always; the CUDA sources too when a CUDA toolkit (CUDA_HOME / nvcc) and a CUDA-enabled
  torch are both present. Architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0": A100, H100/H200).
- FASTGAN_NO_EXT=1 gives a pure-Python install that runs every op on its reference path.
- FASTGAN_REQUIRE_CUDA=1 fails the build instead of building C++ only (CI: the .cu must compile).
- torch must be importable at build time: install with `pip install --no-build-isolation -e .`.
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _pip_cuda_include_dirs():
    # A CUDA toolkit without the cuBLAS/cuSPARSE headers that torch's CUDA headers include (e.g. a bare
    # nvcc) can take them from the pip-installed NVIDIA packages torch depends on.
    try:
        import nvidia
    except ImportError:
        return []
    return sorted({d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "cu*", "include"))})


def _extensions():
    if os.environ.get("FASTGAN_NO_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        raise RuntimeError(
            "setup.py: building fastgan._C needs torch at build time; install with "
            "`pip install --no-build-isolation -e .`, or set FASTGAN_NO_EXT=1 for a pure-Python install"
        ) from e

    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    sources = [s for s in sources if not s.startswith("csrc/test/")]
    with_cuda = cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
    if not with_cuda and os.environ.get("FASTGAN_REQUIRE_CUDA", "0") == "1":
        raise RuntimeError(
            f"setup.py: FASTGAN_REQUIRE_CUDA=1 but no CUDA build is possible (CUDA_HOME={cpp_extension.CUDA_HOME}, "
            f"torch.version.cuda={torch.version.cuda}); set CUDA_HOME to a CUDA toolkit"
        )
    cxx_flags = ["-O3"]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
        define_macros.append(("FASTGAN_WITH_CUDA", None))
        include_dirs += _pip_cuda_include_dirs()
        ext = cpp_extension.CUDAExtension(
            "fastgan._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        )
    else:
        ext = cpp_extension.CppExtension(
            "fastgan._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
        )
    print(f"setup.py: building fastgan._C with {'C++ and CUDA' if with_cuda else 'C++ only'} sources")
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
