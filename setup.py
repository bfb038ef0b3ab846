"""Builds fastgan and its compiled extension fastgan._C (csrc/).

- C++ sources always; the CUDA sources too when torch is a CUDA build and a CUDA toolkit is found.
  Architectures come from TORCH_CUDA_ARCH_LIST (default "8.0;9.0": A100, H100/H200).
- The toolkit: CUDA_HOME or CUDA_PATH when set; otherwise the first usable one (bin/nvcc and
  include/cuda_runtime.h, preferring the CUDA major version torch was built with) among the toolkit behind
  the `nvcc` on PATH (asked from nvcc itself, so a wrapper script is seen through), /usr/local/cuda,
  /usr/local/cuda-*, /opt/cuda. Headers (cuBLAS, cuSPARSE) and the CUDA runtime library a bare toolkit lacks
  come from torch's pip NVIDIA packages (site-packages/nvidia/cuXX/{include,lib}).
- If an auto-detected CUDA build fails (compile, link or version check), the install still succeeds with
  the C++-only extension and prints one line saying why. With CUDA_HOME/CUDA_PATH set, or with
  FASTGAN_REQUIRE_CUDA=1, a failed or impossible CUDA build fails the install (CI's .cu compile check).
- FASTGAN_NO_EXT=1 gives a pure-Python install that runs every op on its reference path.
- torch must be importable at build time: install with `pip install --no-build-isolation -e .`.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
REQUIRE_CUDA = os.environ.get("FASTGAN_REQUIRE_CUDA", "0") == "1"


def _say(msg):
    print(f"setup.py: {msg}", flush=True)


def _fail(msg):
    raise SystemExit(f"setup.py: {msg}")


# ---- finding the CUDA toolkit and runtime ---------------------------------------------------------
def _pip_nvidia_dirs(cuda_major, sub):
    """`sub` ("include" or "lib") folders of the pip NVIDIA packages installed with torch."""
    try:
        import nvidia  # namespace package of nvidia-cuda-runtime, nvidia-cublas, ...
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        # CUDA 13 wheels share one nvidia/cu13/ tree; CUDA 12 wheels have one folder per library.
        merged = glob.glob(os.path.join(root, f"cu{cuda_major}", sub))
        dirs += merged or [d for d in glob.glob(os.path.join(root, "*", sub))
                           if not re.fullmatch(r"cu\d+", os.path.basename(os.path.dirname(d)))]
    return sorted(set(dirs))


def _toolkit_cudart_dir(home):
    """The folder of the toolkit's libcudart.so, or None (some toolkits ship only nvcc and headers)."""
    for sub in ("lib64", "lib", *sorted(glob.glob(os.path.join(home, "targets", "*", "lib")))):
        d = os.path.join(home, sub)
        if os.path.exists(os.path.join(d, "libcudart.so")):
            return d
    return None


def _toolkit_version(home):
    """(major, minor) from include/cuda.h, or None."""
    try:
        with open(os.path.join(home, "include", "cuda.h")) as f:
            m = re.search(r"#define\s+CUDA_VERSION\s+(\d+)", f.read())
    except OSError:
        return None
    return (int(m.group(1)) // 1000, int(m.group(1)) % 1000 // 10) if m else None


def _toolkit_problem(home):
    """None when `home` has what nvcc compiles with, else what it lacks."""
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"no bin/nvcc in {home}"
    if not os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return f"no include/cuda_runtime.h in {home}"
    return None


def _nvcc_top(nvcc):
    """The toolkit root nvcc itself reports. realpath() does not see through a wrapper *script* such as
    `exec /usr/local/cuda-13.0/bin/nvcc "$@"`, but nvcc's dry run prints its own TOP."""
    try:
        out = subprocess.run([nvcc, "-dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    return os.path.normpath(m.group(1).strip()) if m else None


def _toolkit_candidates():
    nvcc = shutil.which("nvcc")
    found = []
    if nvcc:
        found += [os.path.dirname(os.path.dirname(nvcc)),  # torch's own guess
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), _nvcc_top(nvcc)]
    versioned = sorted(glob.glob("/usr/local/cuda-*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
                       reverse=True)
    found += ["/usr/local/cuda", *versioned, "/opt/cuda"]
    unique = {}
    for home in found:
        if home and os.path.isdir(home):
            unique.setdefault(os.path.realpath(home), home)
    return list(unique.values())


def _find_toolkit(cuda_major):
    """(CUDA_HOME, how it was found, explicit?) or (None, why not, False)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            home = os.environ[var]
            problem = _toolkit_problem(home)
            if problem:
                _fail(f"{var}={home} is not a usable CUDA toolkit ({problem}); fix or unset it "
                      "(unset: auto-detect), or set FASTGAN_NO_EXT=1 for a pure-Python install")
            return home, f"{var}={home}", True
    usable = [h for h in _toolkit_candidates() if _toolkit_problem(h) is None]
    if not usable:
        return None, "no CUDA toolkit found (no nvcc on PATH, /usr/local/cuda*, /opt/cuda)", False
    # Prefer the major version torch was built with: torch refuses to build across CUDA majors.
    usable.sort(key=lambda h: (_toolkit_version(h) or (0, 0))[0] != cuda_major)
    return usable[0], f"auto-detected {usable[0]}", False


# ---- the extension --------------------------------------------------------------------------------
SOURCES = sorted(s for s in glob.glob("csrc/**/*.cpp", recursive=True) if not s.startswith("csrc/test/"))
CUDA_SOURCES = sorted(glob.glob("csrc/**/*.cu", recursive=True))


def _cpp_extension():
    from torch.utils import cpp_extension

    return cpp_extension.CppExtension(
        "fastgan._C", SOURCES, include_dirs=[os.path.join(ROOT, "csrc")], extra_compile_args={"cxx": ["-O3"]})


def _cuda_extension(cuda_home, cuda_major):
    from torch.utils import cpp_extension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    ext = cpp_extension.CUDAExtension(
        "fastgan._C", SOURCES + CUDA_SOURCES, include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("FASTGAN_WITH_CUDA", None)], extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    # After the toolkit's own include dir (CUDAExtension added it), so the pip headers only fill what the
    # toolkit lacks (cuBLAS, cuSPARSE) and never shadow nvcc's own CUDA headers.
    ext.include_dirs += _pip_nvidia_dirs(cuda_major, "include")
    cudart_dir = _toolkit_cudart_dir(cuda_home)
    if cudart_dir is not None:
        ext.library_dirs.append(cudart_dir)  # torch looks in lib64/ or lib/ only, not targets/*/lib
    else:
        # Link against the CUDA runtime torch itself loads (its pip package ships only libcudart.so.XX,
        # no unversioned libcudart.so, so name the file).
        pip_cudart = [p for d in _pip_nvidia_dirs(cuda_major, "lib")
                      for p in glob.glob(os.path.join(d, f"libcudart.so.{cuda_major}*"))]
        if not pip_cudart:
            raise RuntimeError(f"no libcudart in {cuda_home} (lib64/, lib/, targets/*/lib) nor in torch's pip "
                               "NVIDIA packages")
        ext.libraries = [f":{os.path.basename(pip_cudart[0])}" if lib == "cudart" else lib for lib in ext.libraries]
        ext.library_dirs.append(os.path.dirname(pip_cudart[0]))
    return ext


def _extensions():
    if os.environ.get("FASTGAN_NO_EXT", "0") == "1":
        return [], {}
    try:
        import torch
    except ImportError:
        _fail("building fastgan._C needs torch at build time; install with "
              "`pip install --no-build-isolation -e .`, or set FASTGAN_NO_EXT=1 for a pure-Python install")

    if torch.version.cuda is None:
        cuda_home, how, explicit = None, f"torch {torch.__version__} is not a CUDA build", False
    else:
        cuda_home, how, explicit = _find_toolkit(int(torch.version.cuda.split(".")[0]))
    if cuda_home is None:
        if REQUIRE_CUDA:
            _fail(f"FASTGAN_REQUIRE_CUDA=1 but no CUDA build is possible: {how}; set CUDA_HOME to a CUDA toolkit")
        _say(f"building fastgan._C with C++ sources only: {how}")
        return [_cpp_extension()], {"build_ext": _build_ext_class(None, False)}

    # torch.utils.cpp_extension resolves CUDA_HOME once, when it is first imported, by its own guess
    # (dirname(dirname(`which nvcc`)), /usr/local here, where a wrapper script lives): point both the
    # module and the compiler subprocesses it starts at the toolkit found above.
    os.environ["CUDA_HOME"] = cuda_home
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = cuda_home
    cuda_major = int(torch.version.cuda.split(".")[0])
    _say(f"building fastgan._C with C++ and CUDA sources (CUDA toolkit: {how})")
    try:
        ext = _cuda_extension(cuda_home, cuda_major)
    except RuntimeError as e:
        if explicit or REQUIRE_CUDA:
            _fail(f"the CUDA build of fastgan._C is impossible: {e}")
        _say(f"CUDA build of fastgan._C impossible ({e}); building C++ only")
        return [_cpp_extension()], {"build_ext": _build_ext_class(None, False)}
    return [ext], {"build_ext": _build_ext_class(cuda_home, not (explicit or REQUIRE_CUDA))}


def _build_ext_class(cuda_home, may_fall_back):
    from torch.utils.cpp_extension import BuildExtension

    class FastganBuildExt(BuildExtension):
        """BuildExtension that, for an auto-detected toolkit, retries C++ only when the CUDA build fails."""

        def build_extensions(self):
            if not may_fall_back:
                return super().build_extensions()
            try:
                return super().build_extensions()
            except Exception as e:  # compile, link, or torch's toolkit/compiler version checks
                why = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            # BuildExtension wraps the compiler's compile methods in place: drop the wrappers so the retry
            # wraps the originals, and use a fresh temp dir so no object of the CUDA attempt is reused.
            for attr in ("compile", "_compile", "spawn"):
                self.compiler.__dict__.pop(attr, None)
            self.build_temp = os.path.join(self.build_temp, "cpp-only")
            # Turn the extension into the C++-only one in place: setuptools keeps its own bookkeeping on it.
            (ext,) = self.extensions
            ext.__dict__.update({k: v for k, v in vars(_cpp_extension()).items() if not k.startswith("_")})
            super().build_extensions()
            print(f"setup.py: built fastgan._C WITHOUT its CUDA kernels: the CUDA build with the auto-detected "
                  f"toolkit {cuda_home} failed ({why}; compiler output above); for the CUDA kernels fix that and "
                  "reinstall with CUDA_HOME=/path/to/cuda-toolkit (FASTGAN_REQUIRE_CUDA=1 makes this an error)",
                  file=sys.stderr, flush=True)

    return FastganBuildExt


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
