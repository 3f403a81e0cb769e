"""LightGBM's C library without its Python package: the booster the scoring service loads.

The service needs five things of a registered LightGBM model: its feature count and names, its text
(the fast scorer compiles it), ``predict`` (the fast scorer checks its compiled code against it at
load) and a handle for the C API's single-row TreeSHAP (reason codes). ``lib_lightgbm`` does all of
it. Importing the ``lightgbm`` package to get there costs 1.25 s in the scoring image, 0.93 s of it
scikit-learn, which ``lightgbm.compat`` imports whenever it is installed (``python -X importtime``,
7 Dec 2026); a new pod's start to ready measured 3.35 s in all. :class:`NativeBooster` binds the
library found where the ``lightgbm`` wheel installs it (``importlib.util.find_spec`` locates the
package without running it), through the same C entry points and arguments as ``lightgbm.Booster``,
so its predictions are the package's, bit for bit (tested side by side).

Training, plotting and everything else keep using the ``lightgbm`` package.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
from pathlib import Path

import numpy as np

_C_API_DTYPE_FLOAT64 = 1
_C_API_PREDICT_NORMAL = 0
_C_API_PREDICT_RAW_SCORE = 1


class NativeBoosterError(ValueError):
    """LightGBM's C library refused a call (its own message)."""


def library_path() -> Path:
    """``lib_lightgbm`` inside the installed ``lightgbm`` package (the package is not imported)."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("lightgbm is not installed")
    for base in spec.submodule_search_locations:
        for name in ("lib/lib_lightgbm.so", "lib_lightgbm.so", "lib/lib_lightgbm.dylib", "lib/lib_lightgbm.dll"):
            path = Path(base) / name
            if path.is_file():
                return path
    raise ImportError(f"no lib_lightgbm in {list(spec.submodule_search_locations)}")


#: The C library (the same one ``lightgbm`` loads: a second ``dlopen`` of a path shares its state).
LIB = ctypes.cdll.LoadLibrary(str(library_path()))
LIB.LGBM_GetLastError.restype = ctypes.c_char_p


def _check(rc: int) -> None:
    if rc != 0:
        raise NativeBoosterError(LIB.LGBM_GetLastError().decode(errors="replace"))


class NativeBooster:
    """A loaded LightGBM model: the part of ``lightgbm.Booster``'s interface the scorers use."""

    #: As for ``lightgbm.Booster`` loaded from a file: no early-stopping iteration, all trees used.
    best_iteration = -1

    def __init__(self, handle: ctypes.c_void_p):
        self._handle = handle
        n = ctypes.c_int(0)
        _check(LIB.LGBM_BoosterGetNumFeature(self._handle, ctypes.byref(n)))
        self._num_feature = n.value

    @classmethod
    def from_file(cls, path: str | Path) -> NativeBooster:
        handle, iterations = ctypes.c_void_p(), ctypes.c_int(0)
        _check(LIB.LGBM_BoosterCreateFromModelfile(str(path).encode(), ctypes.byref(iterations),
                                                   ctypes.byref(handle)))
        return cls(handle)

    @classmethod
    def from_string(cls, model: str) -> NativeBooster:
        handle, iterations = ctypes.c_void_p(), ctypes.c_int(0)
        _check(LIB.LGBM_BoosterLoadModelFromString(model.encode(), ctypes.byref(iterations), ctypes.byref(handle)))
        return cls(handle)

    def num_feature(self) -> int:
        return self._num_feature

    def feature_name(self) -> list[str]:
        n, size = self._num_feature, 256
        while True:
            buffers = [ctypes.create_string_buffer(size) for _ in range(n)]
            pointers = (ctypes.c_char_p * n)(*map(ctypes.addressof, buffers))
            got, needed = ctypes.c_int(0), ctypes.c_size_t(0)
            _check(LIB.LGBM_BoosterGetFeatureNames(self._handle, ctypes.c_int(n), ctypes.byref(got),
                                                   ctypes.c_size_t(size), ctypes.byref(needed), pointers))
            if got.value != n:
                raise NativeBoosterError(f"{got.value} feature names for {n} features")
            if needed.value <= size:
                return [b.value.decode() for b in buffers]
            size = needed.value

    def model_to_string(self, num_iteration: int | None = None, start_iteration: int = 0) -> str:
        """The C library's text model (the package's, without the ``pandas_categorical`` line it adds)."""
        num_iteration = self.best_iteration if num_iteration is None else num_iteration
        size, needed = 1 << 20, ctypes.c_int64(0)
        while True:
            buffer = ctypes.create_string_buffer(size)
            _check(LIB.LGBM_BoosterSaveModelToString(self._handle, ctypes.c_int(start_iteration),
                                                     ctypes.c_int(num_iteration), ctypes.c_int(0),
                                                     ctypes.c_int64(size), ctypes.byref(needed), buffer))
            if needed.value <= size:
                return buffer.value.decode()
            size = needed.value

    def predict(self, data, num_threads: int = 1, raw_score: bool = False, num_iteration: int | None = None
                ) -> np.ndarray:
        """Scores of the rows of a 2-d float matrix (``lightgbm.Booster.predict`` on a NumPy matrix)."""
        x = np.ascontiguousarray(data, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self._num_feature:
            raise ValueError(f"expected a (n, {self._num_feature}) matrix, got shape {x.shape}")
        num_iteration = self.best_iteration if num_iteration is None else num_iteration
        kind = _C_API_PREDICT_RAW_SCORE if raw_score else _C_API_PREDICT_NORMAL
        count = ctypes.c_int64(0)
        _check(LIB.LGBM_BoosterCalcNumPredict(self._handle, ctypes.c_int(x.shape[0]), ctypes.c_int(kind),
                                              ctypes.c_int(0), ctypes.c_int(num_iteration), ctypes.byref(count)))
        out = np.empty(count.value, dtype=np.float64)
        written = ctypes.c_int64(0)
        _check(LIB.LGBM_BoosterPredictForMat(
            self._handle, x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(_C_API_DTYPE_FLOAT64),
            ctypes.c_int32(x.shape[0]), ctypes.c_int32(x.shape[1]), ctypes.c_int(1), ctypes.c_int(kind),
            ctypes.c_int(0), ctypes.c_int(num_iteration), f"num_threads={int(num_threads)}".encode(),
            ctypes.byref(written), out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))))
        if written.value != count.value:
            raise NativeBoosterError(f"LightGBM wrote {written.value} scores for {count.value}")
        return out if count.value == x.shape[0] else out.reshape(x.shape[0], -1)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle:
            _check(LIB.LGBM_BoosterFree(handle))

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown
            self.close()
