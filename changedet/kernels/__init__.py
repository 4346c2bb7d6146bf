"""A fast CPU route for the networks' 3x3 convolutions: oneDNN in bf16, called from XLA.

XLA's CPU backend computes every convolution in float32 (bf16 ones too) and never reaches the
bf16 dot-product (AVX512-BF16) or matrix (AMX) units of recent x86 CPUs; PyTorch does, through
oneDNN, and ran the packaged network 3-4x faster. This module compiles a small C++ file
(``onednn_conv.cc``: a 3x3 or 1x1 'SAME' convolution + bias + optional ReLU) against the
oneDNN shipped on PyPI (``onednn-cpu-gomp``) and registers it as an XLA FFI target, so the
jitted network calls it in place of XLA's convolutions. The inputs and weights are rounded to
bf16, sums are float32.

The route is for inference only (no gradient) and is chosen per predictor
(:func:`resolve_route`): ``"auto"`` takes it on CPUs with native bf16 (``avx512_core_bf16`` or
AMX) when it builds, and XLA's float32 convolutions everywhere else; the environment variable
``CHANGEDET_CPU_CONV`` (``auto``, ``xla``, ``onednn``) overrides the default. Building needs a
C++ compiler (``c++``, or ``$CXX``) and happens once per jaxlib/oneDNN/source version into
``$CHANGEDET_CACHE_DIR`` (default ``~/.cache/changedet``); when anything is missing the route
says why (:func:`onednn_status`) and XLA's path is used.

Must not import rasterio, rioxarray, xarray, dask or matplotlib.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

from changedet.errors import ConfigError

__all__ = ["CONV_ROUTES", "onednn_status", "resolve_route", "conv2d"]

log = logging.getLogger(__name__)

#: Accepted values of a predictor's ``conv`` argument and of ``$CHANGEDET_CPU_CONV``.
CONV_ROUTES: tuple[str, ...] = ("auto", "xla", "onednn")
#: oneDNN CPU ISAs with native bf16 arithmetic: where ``"auto"`` takes the oneDNN route.
NATIVE_BF16_ISAS = ("avx512_core_bf16", "avx512_core_amx")

_TARGET = "changedet_onednn_conv"
_SOURCE = Path(__file__).with_name("onednn_conv.cc")
_lock = threading.Lock()


class _BuildError(Exception):
    """The kernel did not compile; caught by :func:`_load`, which reports the route as
    unavailable (never reaches a user as an exception)."""


def _onednn_prefix() -> Path | None:
    """The install prefix holding oneDNN's headers and library (pip puts a wheel's data files
    under ``sys.prefix`` or the user base)."""
    for prefix in (sys.prefix, site.getuserbase(), sys.base_prefix):
        root = Path(prefix)
        if ((root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file()
                and any((root / "lib").glob("libdnnl.so*"))):
            return root
    return None


def _cache_dir() -> Path:
    base = os.environ.get("CHANGEDET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "changedet")
    return Path(base) / "kernels"


def _build(prefix: Path, compiler: str) -> Path:
    """Compiles ``onednn_conv.cc`` once per (source, jaxlib, oneDNN and its path, compiler); the
    library is written under a temporary name and renamed, so concurrent builders never see
    half a file."""
    import jaxlib

    source = _SOURCE.read_bytes()
    version = (prefix / "include" / "oneapi" / "dnnl" / "dnnl_version.h").read_bytes()
    # the library's path is baked in (rpath): another environment gets its own build
    digest = hashlib.sha256(source + version + jaxlib.__version__.encode() + compiler.encode()
                            + str(prefix.resolve()).encode()).hexdigest()[:16]
    out = _cache_dir() / f"onednn_conv-{digest}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling the oneDNN convolution kernel into %s (once)", out)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=out.parent)
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}", str(_SOURCE),
           f"-L{prefix / 'lib'}", "-l:libdnnl.so.3", f"-Wl,-rpath,{prefix / 'lib'}", "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise _BuildError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _one_line(err: BaseException) -> str:
    """A compiler's or XLA's multi-line message as one line (errors are one line here)."""
    return " ".join(str(err).split())


@functools.cache
def _load() -> tuple[str | None, str]:
    """(ISA, "") when the kernel is built, loaded and registered; (None, why not) otherwise."""
    if sys.platform != "linux":
        return None, f"the oneDNN route is built on Linux only (this is {sys.platform})"
    prefix = _onednn_prefix()
    if prefix is None:
        return None, ("oneDNN is not installed (pip install onednn-cpu-gomp "
                      "onednn-devel-cpu-gomp)")
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        return None, "no C++ compiler to build the oneDNN kernel (set CXX or install g++)"
    try:
        lib = ctypes.CDLL(str(_build(prefix, compiler)))
        lib.changedet_onednn_isa.restype = ctypes.c_char_p
        isa = lib.changedet_onednn_isa().decode()
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.ChangedetOnednnConv),
                                    platform="cpu")
    except (OSError, _BuildError, subprocess.SubprocessError) as err:
        return None, f"the oneDNN kernel did not build or load: {_one_line(err)}"
    try:  # oneDNN has no bf16 convolution on some older CPUs: try one before relying on it
        with jax.default_device(jax.devices("cpu")[0]):
            probe = jnp.ones((1, 4, 4, 2))
            conv2d(probe, jnp.ones((3, 3, 2, 2)), jnp.zeros(2), relu=True).block_until_ready()
    except Exception as err:  # noqa: BLE001  # XLA reports the kernel's error as XlaRuntimeError
        return None, f"oneDNN has no bf16 convolution on this CPU ({isa}): {_one_line(err)}"
    return isa, ""


def _loaded() -> tuple[str | None, str]:
    """:func:`_load` under the lock (concurrent first calls build once)."""
    with _lock:
        return _load()


def onednn_status() -> tuple[bool, str]:
    """Whether the oneDNN route can run here, and a one-line description (the CPU ISA oneDNN
    uses, or why the route is unavailable). Builds the kernel on the first call."""
    isa, why = _loaded()
    if isa is None:
        return False, why
    return True, f"oneDNN bf16 on {isa}"


def resolve_route(route: str | None = None,
                  devices: list[jax.Device] | tuple[jax.Device, ...] | None = None) -> str:
    """The convolution route a predictor uses: ``"xla"`` or ``"onednn"``.

    Args:
      route: ``"auto"``, ``"xla"`` or ``"onednn"``; None reads ``$CHANGEDET_CPU_CONV``
        (default ``"auto"``).
      devices: The devices the network runs on (default: JAX's default devices). The oneDNN
        route is for CPUs; anything else gets ``"xla"``.

    Raises:
      ConfigError: If ``route`` is unknown, or is ``"onednn"`` where that route cannot run.
    """
    if route is None:
        route = os.environ.get("CHANGEDET_CPU_CONV", "auto").strip().lower() or "auto"
    if route not in CONV_ROUTES:
        raise ConfigError(f"the convolution route must be one of {', '.join(CONV_ROUTES)}; "
                          f"got {route!r} (check CHANGEDET_CPU_CONV).")
    if route == "xla":
        return "xla"
    devices = list(devices) if devices is not None else jax.devices()
    on_cpu = all(d.platform == "cpu" for d in devices)
    if route == "onednn":
        ok, why = onednn_status() if on_cpu else (False, "it runs on CPUs only")
        if not ok:
            raise ConfigError(f"the oneDNN convolution route is unavailable: {why}; use "
                              "conv='xla' (CHANGEDET_CPU_CONV=xla).")
        return "onednn"
    if not on_cpu:
        return "xla"
    isa, why = _loaded()
    if isa in NATIVE_BF16_ISAS:
        return "onednn"
    log.debug("convolutions through XLA: %s", why or f"oneDNN's ISA {isa} has no native bf16")
    return "xla"


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, relu: bool,
           out_dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """``relu?(conv_same(x, kernel) + bias)`` by oneDNN, in bf16 with float32 sums.

    Args:
      x: ``(N, H, W, C)`` activations (rounded to bf16).
      kernel: ``(3, 3, C, O)`` or ``(1, 1, C, O)`` weights, flax's HWIO layout (rounded to
        bf16).
      bias: ``(O,)`` float32.
      relu: Apply a ReLU to the result (fused into the convolution).
      out_dtype: ``float32`` or ``bfloat16``.

    Returns:
      ``(N, H, W, O)`` of ``out_dtype``. Call :func:`resolve_route` first (it registers the
      kernel); there is no gradient.
    """
    out = jax.ShapeDtypeStruct((*x.shape[:3], kernel.shape[3]), out_dtype)
    return jax.ffi.ffi_call(_TARGET, out)(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), bias.astype(jnp.float32),
        relu=bool(relu))
