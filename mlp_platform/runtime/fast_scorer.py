"""Fast single-row scoring for the online service: compiled trees, exact to LightGBM.

``FastScorer`` evaluates one transaction in a few microseconds and returns the same score as
``booster.predict`` (it is checked at load time; in practice the scores are bit-identical). Two
backends, chosen at load:

* ``"compiled"`` (preferred): the model's trees are translated to C (one function per tree, one
  ``if (!(x[f] <= t)) goto right`` per split, thresholds and leaf values as exact hexadecimal
  literals), compiled once with the machine's C compiler (``$CC``, ``cc``, ``gcc`` or ``clang``;
  ``-O1``, the trees in ``SOURCE_PARTS`` groups compiled side by side when the process may use more
  than one core) into a shared library cached by the hash of its source, and called through ``ctypes``. The
  generated code reproduces LightGBM's prediction exactly: the same input filter as the C API
  (``|v| <= kZeroThreshold`` becomes 0, NaN is kept), the same per-node missing-value rules
  (missing type None / Zero / NaN, default direction), the same summation order over the trees and
  the same output transform (``1 / (1 + exp(-sigmoid * raw))`` for ``binary``). Before it is used,
  the library is checked against ``booster.predict`` on probe rows built from the model's own
  split thresholds (each threshold, its neighbours, NaN, zeros, tiny and huge values); any
  difference above ``verify_tolerance`` and the scorer falls back.
  ``score_batch`` / ``score_columns`` (nightly batch scoring) evaluate a whole matrix (or one array
  per feature) in C, the rows cut into chunks that a few threads take in turn (``ctypes`` releases
  the GIL during each call), with a separate batch kernel (``_QS_SOURCE``, QuickScorer style: rows
  64 at a time, feature values replaced by their rank among the feature's thresholds, one leaf
  bitvector per tree and row, no data-dependent branches per node; model independent, compiled once
  with ``-O3 -march=native`` and cached, the model passed as tables). It is checked against
  ``booster.predict`` at load like the per-row code; trees of more than 32 leaves, a feature whose
  splits disagree on the missing-value type, or a difference and batches use the per-row code
  (``batch_kernel="rows"`` asks for that, ``"quickscorer"`` raises instead of falling back).
* ``"lightgbm"`` (fallback, and used for reason codes): LightGBM's C API single-row fast path
  (``LGBM_BoosterPredictForMatSingleRowFast``) through ``ctypes``, with one FastConfig handle and
  preallocated input/output buffers per thread. Used when there is no C compiler, when the model
  has what the code generator does not translate (categorical splits, linear trees, several trees
  per iteration, random-forest averaging, other objectives), or when verification fails.

Reason codes (``contributions`` / ``reason_codes``) are LightGBM's TreeSHAP (``pred_contrib``)
through the same C API fast path, computed only when asked for (review / decline decisions).

Thread safety: ``score`` / ``raw_score`` / ``contributions`` may be called from many threads at once.
The compiled function is reentrant (its state lives on the C stack) and each thread copies its row
into its own buffer; each thread gets its own LightGBM FastConfig handle (freed when the thread
ends, or by ``close()``). ``ctypes`` releases the GIL during the call. ``close()`` must not race
with calls still in flight.

Imports only numpy, LightGBM's C library (:mod:`~mlp_platform.runtime.lightgbm_native`, not the
``lightgbm`` package) and the standard library (no pandas / polars / dagster / dbt / scikit-learn).
Boosters may be ``lightgbm.Booster`` objects or :class:`NativeBooster`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlp_platform.runtime.lightgbm_native import LIB as _LIB
from mlp_platform.runtime.lightgbm_native import NativeBooster
from mlp_platform.settings import c_compiler_candidates, compiled_code_cache_dir

if TYPE_CHECKING:  # a lightgbm.Booster or a NativeBooster (the service's: no lightgbm package import)
    import lightgbm as lgb

log = logging.getLogger(__name__)

# LightGBM's ``kZeroThreshold`` (``const double kZeroThreshold = 1e-35f``): a float literal widened.
K_ZERO_THRESHOLD = float(np.float32(1e-35))

_C_API_PREDICT_NORMAL = 0
_C_API_PREDICT_RAW_SCORE = 1
_C_API_PREDICT_CONTRIB = 3
_C_API_DTYPE_FLOAT64 = 1

_CODEGEN_VERSION = "5"  # bump when the generated code changes (part of the cache key)
# -O1, not -O2: for the generated trees (branches and constants) the scores come out as fast (5.75 us
# per row either way, 300 trees, paired, 7 Dec 2026) and gcc compiles them in 60% of the time (1.58 s
# against 2.65 s), which a new pod spends before it is ready.
_CFLAGS = ("-O1", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off")
#: The per-model source's tree groups: compiled in parallel on as many cores as the process may use.
SOURCE_PARTS = 4
# The batch kernel (model independent, see _QS_SOURCE) may use the machine's vector instructions; if
# the compiler refuses -march=native it is built with the portable flags.
_QS_CFLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-fast-math", "-ffp-contract=off")
_QS_MISSING_BIN = 16777214  # QS_M in the kernel: a missing value's bin (exact in float32)
_MIN_ROWS_PER_THREAD = 4096  # below this a second thread costs more than it saves
_IDENTITY_OBJECTIVES = frozenset({"regression", "regression_l2", "regression_l1", "huber", "fair",
                                  "quantile", "mape"})

# The C API entry points, bound once with our own prototypes (the attributes of ``_LIB`` that
# lightgbm itself uses are left untouched).
_FAST_PREDICT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p)(
    ctypes.cast(_LIB.LGBM_BoosterPredictForMatSingleRowFast, ctypes.c_void_p).value)
_FAST_INIT = _LIB.LGBM_BoosterPredictForMatSingleRowFastInit
_FAST_FREE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(
    ctypes.cast(_LIB.LGBM_FastConfigFree, ctypes.c_void_p).value)
_LAST_ERROR = ctypes.CFUNCTYPE(ctypes.c_char_p)(ctypes.cast(_LIB.LGBM_GetLastError, ctypes.c_void_p).value)


class FastScorerError(RuntimeError):
    """The fast scorer could not be built or a LightGBM C API call failed."""


class UnsupportedModel(FastScorerError):
    """The model has something the tree compiler does not translate (the scorer falls back)."""


def _lgbm_error(rc: int) -> FastScorerError:
    msg = _LAST_ERROR()
    return FastScorerError(f"LightGBM C API returned {rc}: {msg.decode(errors='replace') if msg else '?'}")


# --------------------------------------------------------------------------------------------------
# LightGBM C API single-row fast path, one FastConfig handle per thread
# --------------------------------------------------------------------------------------------------

def _release_handle(live: dict[int, int], lock: threading.Lock, key: int) -> None:
    """Free one thread's FastConfig (called when that thread's state dies, or never if closed first)."""
    with lock:
        handle = live.pop(key, None)
    if handle:
        _FAST_FREE(handle)


class _ThreadState:
    """One thread's FastConfig handle and buffers (kept in a threading.local)."""

    __slots__ = ("handle", "inp", "out", "out_len", "inp_ptr", "out_ptr", "len_ptr", "__weakref__")


class _FastConfigPool:
    """LightGBM single-row fast predictions of one predict type, with per-thread handles."""

    def __init__(self, booster: lgb.Booster, predict_type: int, num_iteration: int, n_features: int,
                 out_size: int):
        self._booster = booster  # the handles point into it: keep it alive as long as they are
        self._predict_type = predict_type
        self._num_iteration = num_iteration
        self._n_features = n_features
        self._out_size = out_size
        self._params = b"num_threads=1"
        self._live: dict[int, int] = {}
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._closed = False

    def state(self) -> _ThreadState:
        try:
            return self._tls.state
        except AttributeError:
            return self._new_state()

    def _new_state(self) -> _ThreadState:
        if self._closed:
            raise FastScorerError("the scorer is closed")
        handle = ctypes.c_void_p()
        rc = _FAST_INIT(self._booster._handle, ctypes.c_int(self._predict_type), ctypes.c_int(0),
                        ctypes.c_int(self._num_iteration), ctypes.c_int(_C_API_DTYPE_FLOAT64),
                        ctypes.c_int32(self._n_features), ctypes.c_char_p(self._params),
                        ctypes.byref(handle))
        if rc != 0:
            raise _lgbm_error(rc)
        st = _ThreadState()
        st.handle = handle.value
        st.inp = np.zeros(self._n_features, dtype=np.float64)
        st.out = np.zeros(self._out_size, dtype=np.float64)
        st.out_len = ctypes.c_int64(0)
        st.inp_ptr = st.inp.ctypes.data
        st.out_ptr = st.out.ctypes.data
        st.len_ptr = ctypes.addressof(st.out_len)
        key = id(st)
        with self._lock:
            self._live[key] = st.handle
        fin = weakref.finalize(st, _release_handle, self._live, self._lock, key)
        fin.atexit = False
        self._tls.state = st
        return st

    def predict_into(self, row: np.ndarray) -> np.ndarray:
        """Predict one row; returns this thread's output buffer (copy it to keep it)."""
        if self._closed:  # the handles are freed: never call into them
            raise FastScorerError("the scorer is closed")
        st = self.state()
        st.inp[:] = row
        rc = _FAST_PREDICT(st.handle, st.inp_ptr, st.len_ptr, st.out_ptr)
        if rc != 0:
            raise _lgbm_error(rc)
        return st.out

    def close(self) -> None:
        """Free every thread's handle (before the booster can go away)."""
        self._closed = True
        with self._lock:
            handles = list(self._live.values())
            self._live.clear()
        for handle in handles:
            _FAST_FREE(handle)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown: nothing useful to do
            self.close()


# --------------------------------------------------------------------------------------------------
# The tree compiler
# --------------------------------------------------------------------------------------------------

@dataclass
class _Tree:
    leaf_value: list[float]
    split_feature: list[int] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    decision_type: list[int] = field(default_factory=list)
    left_child: list[int] = field(default_factory=list)
    right_child: list[int] = field(default_factory=list)


@dataclass
class _Model:
    n_features: int
    transform: str  # "sigmoid" or "identity"
    sigmoid: float
    trees: list[_Tree]


def _parse_model(model_str: str) -> _Model:
    """Parse LightGBM's text model (thresholds and leaf values are printed to round-trip exactly)."""
    head, sep, rest = model_str.partition("\nTree=")
    if not sep:
        raise UnsupportedModel("the model has no trees")
    header = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    if int(header.get("num_tree_per_iteration", "1")) != 1 or int(header.get("num_class", "1")) != 1:
        raise UnsupportedModel("several trees per iteration (multiclass)")
    if "average_output" in head.splitlines():
        raise UnsupportedModel("random-forest averaging")
    n_features = int(header["max_feature_idx"]) + 1
    objective = header.get("objective", "").split()
    transform, sigmoid = "identity", 1.0
    if objective and objective[0] == "binary":
        params = dict(tok.split(":", 1) for tok in objective[1:] if ":" in tok)
        if set(params) - {"sigmoid"} or len(params) != len(objective) - 1:
            raise UnsupportedModel(f"binary objective options {objective[1:]}")
        transform, sigmoid = "sigmoid", float(params.get("sigmoid", "1"))
    elif not objective or objective[0] not in _IDENTITY_OBJECTIVES or "sqrt" in objective:
        raise UnsupportedModel(f"objective {' '.join(objective) or '(none)'}")

    body = rest.split("\nend of trees", 1)[0]
    trees = []
    for block in body.split("\nTree="):  # each block starts with the tree's index line
        kv = dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line)
        if kv.get("is_linear", "0") != "0":
            raise UnsupportedModel("linear trees")
        if int(kv.get("num_cat", "0")) > 0:
            raise UnsupportedModel("categorical splits")
        num_leaves = int(kv["num_leaves"])
        tree = _Tree(leaf_value=[float(v) for v in kv["leaf_value"].split()])
        if num_leaves > 1:
            tree.split_feature = [int(v) for v in kv["split_feature"].split()]
            tree.threshold = [float(v) for v in kv["threshold"].split()]
            tree.decision_type = [int(v) for v in kv["decision_type"].split()]
            tree.left_child = [int(v) for v in kv["left_child"].split()]
            tree.right_child = [int(v) for v in kv["right_child"].split()]
            if any(dt & 1 for dt in tree.decision_type):
                raise UnsupportedModel("categorical splits")
            if len(tree.leaf_value) != num_leaves or len(tree.threshold) != num_leaves - 1:
                raise UnsupportedModel("malformed tree")
        trees.append(tree)
    return _Model(n_features, transform, sigmoid, trees)


def _c_double(v: float) -> str:
    """An exact C literal for a double (hexadecimal floating point)."""
    if math.isnan(v):
        raise UnsupportedModel("NaN threshold or leaf value")
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"({v.hex()})"


def _c_condition(tree: _Tree, node: int) -> str:
    """The C condition under which LightGBM's NumericalDecision goes left (x already filtered)."""
    f = tree.split_feature[node]
    t = _c_double(tree.threshold[node])
    dt = tree.decision_type[node]
    default_left = bool(dt & 2)
    missing_type = (dt >> 2) & 3
    if missing_type == 1:  # Zero: NaN counts as 0, and |v| <= kZeroThreshold takes the default side
        return (f"((isnan(x[{f}]) || (x[{f}] >= -KZ && x[{f}] <= KZ)) ? {int(default_left)} "
                f": (x[{f}] <= {t}))")
    nan_left = default_left if missing_type == 2 else (tree.threshold[node] >= 0.0)  # None: NaN -> 0
    # `v <= t` is false for NaN, `!(v > t)` is true for NaN: one comparison per split either way.
    return f"!(x[{f}] > {t})" if nan_left else f"(x[{f}] <= {t})"


def _c_tree(i: int, tree: _Tree) -> str:
    if not tree.split_feature:
        return f"FS_TREE double t{i}(const double* x) {{ (void)x; return {_c_double(tree.leaf_value[0])}; }}\n"
    lines = [f"FS_TREE double t{i}(const double* x) {{"]
    right_targets = {c for c in tree.right_child}
    stack = [0]
    while stack:  # preorder, left child emitted right after its parent (fall-through)
        node = stack.pop()
        if node < 0:
            leaf = ~node
            label = f"l{leaf}: " if node in right_targets else ""
            lines.append(f"  {label}return {_c_double(tree.leaf_value[leaf])};")
            continue
        label = f"n{node}: " if node in right_targets else ""
        right = tree.right_child[node]
        target = f"n{right}" if right >= 0 else f"l{~right}"
        lines.append(f"  {label}if (!{_c_condition(tree, node)}) goto {target};")
        stack.append(right)
        stack.append(tree.left_child[node])
    lines.append("}\n")
    return "\n".join(lines)


def generate_c_source(model_str: str) -> tuple[str, _Model]:
    """C source computing exactly what LightGBM's predict computes for this model."""
    model = _parse_model(model_str)
    nf = model.n_features
    out = [
        "/* Generated by mlp_platform.runtime.fast_scorer: exact LightGBM tree evaluation. */",
        "#include <math.h>",
        f"#define NF {nf}",
        f"#define KZ ({K_ZERO_THRESHOLD.hex()})",
        "",
    ]
    # The trees are cut into SOURCE_PARTS groups, each between `#if FS_IN(k)` guards: compiled once
    # (FS_PART undefined) the file is one translation unit; compile_library may instead compile it
    # once per part (-DFS_PART=k) on several cores and link the objects. The trees are the same
    # functions either way, and raw() sums them in the same order, so the scores are identical.
    n = len(model.trees)
    out.append("#ifdef FS_PART")
    out.append("#define FS_IN(k) (FS_PART == (k))")
    out.append('#define FS_TREE __attribute__((visibility("hidden")))')
    out.append("#else")
    out.append("#define FS_IN(k) 1")
    out.append("#define FS_TREE static")
    out.append("#endif")
    out.extend(f"FS_TREE double t{i}(const double* x);" for i in range(n))
    bounds = [round(k * n / SOURCE_PARTS) for k in range(SOURCE_PARTS + 1)]
    for k in range(SOURCE_PARTS):
        out.append(f"#if FS_IN({k + 1})")
        out.extend(_c_tree(i, model.trees[i]) for i in range(bounds[k], bounds[k + 1]))
        out.append("#endif")
    out.append("#if FS_IN(0)")
    out.append("static double raw(const double* in) {")
    out.append("  double x[NF];")
    out.append("  for (int i = 0; i < NF; ++i) {")
    out.append("    double v = in[i];")
    out.append("    x[i] = (fabs(v) > KZ || isnan(v)) ? v : 0.0;  /* the C API's dense-row filter */")
    out.append("  }")
    out.append("  double s = 0.0;")
    out.extend(f"  s += t{i}(x);" for i in range(len(model.trees)))
    out.append("  return s;")
    out.append("}\n")
    transform = f"1.0 / (1.0 + exp(-{_c_double(model.sigmoid)} * r))" if model.transform == "sigmoid" else "r"
    out.append("int fs_num_features(void) { return NF; }")
    out.append("double fs_raw(const double* in) { return raw(in); }")
    out.append(f"double fs_predict(const double* in) {{ double r = raw(in); return {transform}; }}")
    out.append("void fs_predict_many(const double* X, long n, int raw_score, double* out) {")
    out.append("  for (long i = 0; i < n; ++i) {")
    out.append("    out[i] = raw_score ? fs_raw(X + i * NF) : fs_predict(X + i * NF);")
    out.append("  }")
    out.append("}")
    # Batch entry point over columns (one contiguous array per feature, e.g. straight from Arrow):
    # each row is gathered into a local buffer and goes through raw(), so it is bit-identical to
    # fs_predict().
    out.append(f"static double out_transform(double r) {{ return {transform}; }}")
    out.append("void fs_predict_columns(const double* const* cols, long n, int raw_score, double* out) {")
    out.append("  double row[NF];")
    out.append("  for (long r = 0; r < n; ++r) {")
    out.append("    for (int i = 0; i < NF; ++i) row[i] = cols[i][r];")
    out.append("    double s = raw(row);")
    out.append("    out[r] = raw_score ? s : out_transform(s);")
    out.append("  }")
    out.append("}")
    out.append("#endif")
    return "\n".join(out) + "\n", model


def find_c_compiler() -> str | None:
    for candidate in c_compiler_candidates():
        path = shutil.which(candidate)
        if path:
            return path
    return None


def default_cache_dir() -> Path:
    return compiled_code_cache_dir()


def _compiler_identity(cc: str) -> str:
    try:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0] if res.stdout else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def _cpu_identity() -> str:
    """What -march=native depends on (part of the cache key of libraries built with it)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "|".join(sorted({ln.split(":", 1)[1].strip() for ln in lines
                                if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _build(cc: str, cflags: tuple[str, ...], src: Path, out: Path, parts: int) -> None:
    """Compile ``src`` into the shared library ``out``: in one go, or (``parts`` > 0 and more than one
    usable core) as ``-DFS_PART=0..parts`` objects compiled side by side, then linked."""
    def run(cmd: list[str]) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise FastScorerError(f"C compiler failed ({res.returncode}): {res.stderr[-2000:]}")

    jobs = min(_usable_cpus(), parts + 1)
    if parts <= 0 or jobs <= 1:
        run([cc, *cflags, "-o", str(out), str(src), "-lm"])
        return
    compile_flags = [f for f in cflags if f != "-shared"]
    objects = [src.with_name(f"part{k}.o") for k in range(parts + 1)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, ([cc, *compile_flags, f"-DFS_PART={k}", "-c", "-o", str(obj), str(src)]
                            for k, obj in enumerate(objects))))
    run([cc, "-shared", "-fPIC", "-o", str(out), *map(str, objects), "-lm"])


def compile_library(source: str, cache_dir: Path | None = None, cc: str | None = None,
                    cflags: Sequence[str] = _CFLAGS, name: str = "lgbm_trees",
                    source_parts: int = 0) -> tuple[Path, bool, float]:
    """Compile ``source`` into a shared library (cached by hash; ``name`` prefixes the file name);
    ``source_parts``: the source's ``FS_PART`` groups, compiled in parallel where there are cores for it.
    Returns (path, cache hit, seconds)."""
    cc = cc or find_c_compiler()
    if cc is None:
        raise FastScorerError("no C compiler found ($CC, cc, gcc, clang)")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cflags = tuple(cflags)
    parts = [_CODEGEN_VERSION, _compiler_identity(cc), " ".join(cflags), platform.machine(), sys.platform]
    if cflags != _CFLAGS:  # keep the key of the per-model libraries as it was
        parts.append(_cpu_identity() if any(f.startswith("-march=native") for f in cflags) else "")
    key = hashlib.sha256("\0".join([*parts, source]).encode()).hexdigest()
    lib_path = cache_dir / f"{name}_{key[:32]}.so"
    if lib_path.exists():
        return lib_path, True, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        src = Path(tmp) / "trees.c"
        src.write_text(source)
        tmp_lib = Path(tmp) / "trees.so"
        _build(cc, cflags, src, tmp_lib, source_parts)
        os.replace(tmp_lib, lib_path)  # atomic: concurrent builders of the same model do not clash
    return lib_path, False, time.perf_counter() - start


def probe_rows(model: _Model, n_rows: int = 1024, seed: int = 0) -> np.ndarray:
    """Rows that exercise every split: each threshold, its float neighbours, NaN, zeros, extremes."""
    rng = np.random.default_rng(seed)
    per_feature: list[list[float]] = [[] for _ in range(model.n_features)]
    for tree in model.trees:
        for f, t in zip(tree.split_feature, tree.threshold, strict=True):
            if math.isfinite(t):
                per_feature[f].extend((t, math.nextafter(t, -math.inf), math.nextafter(t, math.inf)))
    special = [math.nan, 0.0, -0.0, K_ZERO_THRESHOLD, -K_ZERO_THRESHOLD, K_ZERO_THRESHOLD / 2,
               -K_ZERO_THRESHOLD / 2, 5e-324, 1e300, -1e300, math.inf, -math.inf, 1.0, -1.0]
    x = np.empty((n_rows, model.n_features))
    for f in range(model.n_features):
        pool = np.array(per_feature[f] + special) if per_feature[f] else np.array(special)
        x[:, f] = rng.choice(pool, size=n_rows)
    return x


# --------------------------------------------------------------------------------------------------
# The batch kernel: QuickScorer-style evaluation of many rows (model as tables, no per-model code)
# --------------------------------------------------------------------------------------------------

_QS_SOURCE = """/* Batch evaluation of LightGBM trees, QuickScorer style (mlp_platform.runtime.fast_scorer).
 *
 * Model independent: the model comes as tables (qs_model). Rows are scored QS_B at a time:
 * 1. each feature value is filtered like the C API (|v| <= kZeroThreshold -> 0) and replaced by
 *    its bin, the number of the feature's split thresholds strictly below it (branch-free binary
 *    search), or QS_M when it is "missing" for that feature's splits (NaN; NaN or 0 for zero-as-
 *    missing); for missing type None, NaN is 0.0. A row goes right at a node iff bin > k (the rank
 *    of the node's threshold) and lim > bin (lim sends QS_M to the default side).
 * 2. one 32-bit leaf bitvector per tree and row, all ones; for each feature, the nodes sorted by
 *    threshold rank: a row going right clears the node's left-subtree leaves (in-order bits). Nodes
 *    whose rank is >= the block's largest bin cannot send any row right and are skipped.
 * 3. the exit leaf of each tree is the lowest set bit; the leaf values are added in tree order in
 *    double, then 1 / (1 + exp(-sigmoid * s)): the same operations as LightGBM, so bit-identical.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#ifndef QS_B
#define QS_B 64
#endif
#define QS_M 16777214.0f  /* the bin of a missing value (2^24 - 2: exact in float) */

typedef struct {
  int32_t n_features, n_trees, transform;
  double sigmoid, kz;
  const double* thr; const int32_t* thr_off; const int32_t* thr_step; const int32_t* mode;
  const int32_t* node_off; const float* node_k; const float* node_lim; const int32_t* node_tree;
  const uint32_t* node_nmask; const double* leaf; const int32_t* leaf_off;
} qs_model;

int qs_block(void) { return QS_B; }
#ifdef __AVX__
int qs_simd(void) { return 1; }
#else
int qs_simd(void) { return 0; }
#endif

void qs_predict(const qs_model* m, const double* const* cols, long stride, long n, int raw_score,
                double* out) {
  const int nf = m->n_features, nt = m->n_trees;
  float* bins = (float*)aligned_alloc(64, sizeof(float) * QS_B * (size_t)(nf > 0 ? nf : 1));
  uint32_t* V = (uint32_t*)aligned_alloc(64, sizeof(uint32_t) * QS_B * (size_t)(nt > 0 ? nt : 1));
  if (!bins || !V) { free(bins); free(V); for (long r = 0; r < n; ++r) out[r] = NAN; return; }
  for (long r0 = 0; r0 < n; r0 += QS_B) {
    int nb = (n - r0 < QS_B) ? (int)(n - r0) : QS_B;
    for (int f = 0; f < nf; ++f) {
      const int32_t step0 = m->thr_step[f];
      if (!step0) continue;
      const double* c = cols[f] + r0 * stride;
      const double* a = m->thr + m->thr_off[f];
      const int32_t mode = m->mode[f];
      double v[QS_B];
      int32_t pos[QS_B], miss[QS_B];
      for (int l = 0; l < QS_B; ++l) {
        double x = (l < nb) ? c[l * stride] : 0.0;
        if (!(fabs(x) > m->kz || isnan(x))) x = 0.0;         /* the C API's dense-row filter */
        int32_t ms = mode != 0 && (isnan(x) || (mode == 2 && x == 0.0));
        if (isnan(x)) x = 0.0;                              /* mode 0: NaN is 0.0; else missing */
        v[l] = x; miss[l] = ms; pos[l] = 0;
      }
      for (int32_t step = step0; step > 0; step >>= 1)
        for (int l = 0; l < QS_B; ++l) pos[l] += (a[pos[l] + step - 1] < v[l]) ? step : 0;
      float* b = bins + f * QS_B;
      for (int l = 0; l < QS_B; ++l) b[l] = miss[l] ? QS_M : (float)pos[l];
    }
    memset(V, 0xff, sizeof(uint32_t) * QS_B * (size_t)nt);
    for (int f = 0; f < nf; ++f) {
      int j = m->node_off[f];
      const int je = m->node_off[f + 1];
      if (j == je) continue;
      const float* b = bins + f * QS_B;
      float bmax = b[0];
      for (int l = 1; l < QS_B; ++l) bmax = b[l] > bmax ? b[l] : bmax;
#ifdef __AVX__
      __m256 bv[QS_B / 8];
      for (int i = 0; i < QS_B / 8; ++i) bv[i] = _mm256_load_ps(b + 8 * i);
      if (bmax >= QS_M) {
        for (; j < je; ++j) {
          const __m256 k = _mm256_broadcast_ss(m->node_k + j), lim = _mm256_broadcast_ss(m->node_lim + j);
          const __m256 nm = _mm256_broadcast_ss((const float*)(m->node_nmask + j));
          float* v = (float*)(V + (size_t)m->node_tree[j] * QS_B);
          for (int i = 0; i < QS_B / 8; ++i) {
            __m256 go = _mm256_and_ps(_mm256_cmp_ps(bv[i], k, _CMP_GT_OQ), _mm256_cmp_ps(lim, bv[i], _CMP_GT_OQ));
            _mm256_store_ps(v + 8 * i, _mm256_andnot_ps(_mm256_and_ps(go, nm), _mm256_load_ps(v + 8 * i)));
          }
        }
      } else {
        for (; j < je && m->node_k[j] < bmax; ++j) {
          const __m256 k = _mm256_broadcast_ss(m->node_k + j);
          const __m256 nm = _mm256_broadcast_ss((const float*)(m->node_nmask + j));
          float* v = (float*)(V + (size_t)m->node_tree[j] * QS_B);
          for (int i = 0; i < QS_B / 8; ++i) {
            __m256 go = _mm256_cmp_ps(bv[i], k, _CMP_GT_OQ);
            _mm256_store_ps(v + 8 * i, _mm256_andnot_ps(_mm256_and_ps(go, nm), _mm256_load_ps(v + 8 * i)));
          }
        }
      }
#else
      for (; j < je && (bmax >= QS_M || m->node_k[j] < bmax); ++j) {
        uint32_t* v = V + (size_t)m->node_tree[j] * QS_B;
        const float k = m->node_k[j], lim = m->node_lim[j];
        const uint32_t nm = m->node_nmask[j];
        for (int l = 0; l < QS_B; ++l) v[l] &= ~((b[l] > k && lim > b[l]) ? nm : 0u);
      }
#endif
    }
    double s[QS_B];
    for (int l = 0; l < QS_B; ++l) s[l] = 0.0;
    for (int t = 0; t < nt; ++t) {                         /* tree order, as LightGBM sums */
      const double* lv = m->leaf + m->leaf_off[t];
      const uint32_t* vt = V + (size_t)t * QS_B;
      for (int l = 0; l < QS_B; ++l) s[l] += lv[__builtin_ctz(vt[l])];
    }
    for (int l = 0; l < nb; ++l)
      out[r0 + l] = raw_score ? s[l] : (m->transform ? 1.0 / (1.0 + exp(-m->sigmoid * s[l])) : s[l]);
  }
  free(bins);
  free(V);
}
"""


class _QSModelStruct(ctypes.Structure):
    _fields_ = [("n_features", ctypes.c_int32), ("n_trees", ctypes.c_int32), ("transform", ctypes.c_int32),
                ("sigmoid", ctypes.c_double), ("kz", ctypes.c_double)] + [
        (name, ctypes.c_void_p) for name in ("thr", "thr_off", "thr_step", "mode", "node_off", "node_k",
                                             "node_lim", "node_tree", "node_nmask", "leaf", "leaf_off")]


def qs_tables(model: _Model) -> dict[str, np.ndarray]:
    """The kernel's tables for a parsed model (see _QS_SOURCE). Raises UnsupportedModel for trees of
    more than 32 leaves or a feature whose splits disagree on the missing-value type."""
    nf = model.n_features
    thresholds: list[set[float]] = [set() for _ in range(nf)]
    missing: list[set[int]] = [set() for _ in range(nf)]
    for tree in model.trees:
        for f, t, dt in zip(tree.split_feature, tree.threshold, tree.decision_type, strict=True):
            if math.isnan(t):
                raise UnsupportedModel("NaN threshold")
            thresholds[f].add(t)
            missing[f].add((dt >> 2) & 3)
    thr: list[float] = []
    thr_off, thr_step, mode, rank = [0], [], [], []
    for f in range(nf):
        if len(missing[f]) > 1:
            raise UnsupportedModel(f"feature {f}: splits with different missing-value types")
        mode.append({0: 0, 2: 1, 1: 2}[next(iter(missing[f]), 0)])  # None / NaN / Zero
        ts = sorted(thresholds[f])
        if len(ts) >= _QS_MISSING_BIN - 1:
            raise UnsupportedModel(f"feature {f}: too many thresholds")
        padded = 1
        while padded - 1 < len(ts):
            padded *= 2
        thr += ts + [math.inf] * (padded - 1 - len(ts)) if ts else []  # +inf is never < a value
        thr_step.append(padded // 2 if ts else 0)
        thr_off.append(len(thr))
        rank.append({t: i for i, t in enumerate(ts)})
    nodes: list[list[tuple[int, int, int, int]]] = [[] for _ in range(nf)]
    leaves: list[float] = []
    leaf_off = []
    for ti, tree in enumerate(model.trees):
        leaf_off.append(len(leaves))
        if not tree.split_feature:
            leaves.append(tree.leaf_value[0])
            continue
        order: list[int] = []  # leaves in in-order (left to right)
        left_range: dict[int, tuple[int, int]] = {}
        stack: list[tuple[int, bool]] = [(0, False)]
        while stack:  # iterative in-order walk: (node, left subtree done)
            node, done = stack.pop()
            if node < 0:
                order.append(~node)
            elif not done:
                left_range[node] = (len(order), -1)
                stack.append((node, True))
                stack.append((tree.left_child[node], False))
            else:
                left_range[node] = (left_range[node][0], len(order))
                stack.append((tree.right_child[node], False))
        if len(order) > 32:
            raise UnsupportedModel("trees of more than 32 leaves")
        leaves += [tree.leaf_value[i] for i in order]
        for node, (lo, hi) in left_range.items():
            f = tree.split_feature[node]
            lim = _QS_MISSING_BIN if tree.decision_type[node] & 2 else _QS_MISSING_BIN + 1  # default left?
            nodes[f].append((rank[f][tree.threshold[node]], lim, ti, ((1 << hi) - 1) ^ ((1 << lo) - 1)))
    flat = [n for f in range(nf) for n in sorted(nodes[f])]
    node_off = np.cumsum([0] + [len(nodes[f]) for f in range(nf)])
    arr = np.array(flat, dtype=np.int64).reshape(-1, 4)
    i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
    return {"thr": np.array(thr, dtype=np.float64), "thr_off": i32(thr_off), "thr_step": i32(thr_step),
            "mode": i32(mode), "node_off": i32(node_off), "node_k": arr[:, 0].astype(np.float32),
            "node_lim": arr[:, 1].astype(np.float32), "node_tree": i32(arr[:, 2]),
            "node_nmask": arr[:, 3].astype(np.uint32), "leaf": np.array(leaves, dtype=np.float64),
            "leaf_off": i32(leaf_off)}


class _BatchKernel:
    """The compiled batch kernel bound to one model's tables (reentrant: state is per call)."""

    def __init__(self, model: _Model, cache_dir: Path | None):
        self.tables = qs_tables(model)  # kept alive: the struct points into these arrays
        try:
            lib_path, cached, seconds = compile_library(_QS_SOURCE, cache_dir, cflags=_QS_CFLAGS)
        except FastScorerError:  # e.g. a compiler without -march=native
            lib_path, cached, seconds = compile_library(_QS_SOURCE, cache_dir)
        self.lib = ctypes.CDLL(str(lib_path))
        self.fn = self.lib.qs_predict
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_int,
                            ctypes.c_void_p]
        self.fn.restype = None
        self.info = {"batch_library": str(lib_path), "batch_cache_hit": cached,
                     "batch_compile_seconds": round(seconds, 3), "batch_simd": bool(self.lib.qs_simd()),
                     "batch_block_rows": int(self.lib.qs_block())}
        self.struct = _QSModelStruct(model.n_features, len(model.trees), int(model.transform == "sigmoid"),
                                     model.sigmoid, K_ZERO_THRESHOLD)
        for name in ("thr", "thr_off", "thr_step", "mode", "node_off", "node_k", "node_lim", "node_tree",
                     "node_nmask", "leaf", "leaf_off"):
            setattr(self.struct, name, self.tables[name].ctypes.data)
        self.struct_ptr = ctypes.addressof(self.struct)

    def run(self, pointers, stride: int, n: int, raw_score: bool, out_ptr: int) -> None:
        """Score n rows; element (r, f) at ``pointers[f] + r * stride`` doubles."""
        self.fn(self.struct_ptr, pointers, stride, n, int(raw_score), out_ptr)


# --------------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------------

class _CompiledTrees:
    """The ctypes binding of one compiled library."""

    def __init__(self, lib_path: Path, n_features: int):
        self.lib = ctypes.CDLL(str(lib_path))
        if self.lib.fs_num_features() != n_features:
            raise FastScorerError(f"{lib_path}: compiled for another number of features")
        # One row takes a few microseconds: keep the GIL for it (PyDLL). Releasing it would let the
        # decision-log writer or the shadow thread take it, and the event loop would then wait for
        # them to give it back. Batch calls (below) release it, so that threads can share the work.
        single = ctypes.PyDLL(str(lib_path))
        self.predict = single.fs_predict
        self.predict.argtypes = [ctypes.c_void_p]
        self.predict.restype = ctypes.c_double
        self.raw = single.fs_raw
        self.raw.argtypes = [ctypes.c_void_p]
        self.raw.restype = ctypes.c_double
        self.many = self.lib.fs_predict_many
        self.many.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_void_p]
        self.many.restype = None

        self.columns = self.lib.fs_predict_columns
        self.columns.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_void_p]
        self.columns.restype = None
        self.n_features = n_features
        self.kernel: _BatchKernel | None = None  # set once verified; else the per-row code serves batches

    def predict_matrix(self, x: np.ndarray, raw_score: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty(x.shape[0], dtype=np.float64)
        self.many(x.ctypes.data, x.shape[0], int(raw_score), out.ctypes.data)
        return out

    def predict_batch(self, x: np.ndarray, raw_score: bool = False, threads: int = 1) -> np.ndarray:
        """Many rows of a matrix, in chunks taken in turn by ``threads`` threads (ctypes releases the
        GIL during each call): the batch kernel if there is one, else the per-row compiled code."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty(x.shape[0], dtype=np.float64)
        row_bytes = x.strides[0]
        kernel = self.kernel
        if kernel is not None:
            base = x.ctypes.data

            def part(lo: int, hi: int) -> None:
                pointers = (ctypes.c_void_p * self.n_features)(
                    *[base + lo * row_bytes + f * 8 for f in range(self.n_features)])
                kernel.run(pointers, self.n_features, hi - lo, raw_score, out.ctypes.data + lo * 8)
        else:
            def part(lo: int, hi: int) -> None:
                self.many(x.ctypes.data + lo * row_bytes, hi - lo, int(raw_score), out.ctypes.data + lo * 8)

        _split_rows(x.shape[0], threads, part)
        return out

    def predict_columns(self, columns: Sequence[np.ndarray], raw_score: bool = False,
                        threads: int = 1) -> np.ndarray:
        """Many rows given as one contiguous float64 array per feature (no row-major copy)."""
        if len(columns) != self.n_features:
            raise ValueError(f"expected {self.n_features} feature columns, got {len(columns)}")
        cols = [np.ascontiguousarray(c, dtype=np.float64) for c in columns]
        n = len(cols[0])
        if any(c.ndim != 1 or len(c) != n for c in cols):
            raise ValueError("feature columns must be one-dimensional and of equal length")
        out = np.empty(n, dtype=np.float64)
        kernel = self.kernel

        def part(lo: int, hi: int) -> None:
            pointers = (ctypes.c_void_p * self.n_features)(*[c.ctypes.data + lo * 8 for c in cols])
            if kernel is not None:
                kernel.run(pointers, 1, hi - lo, raw_score, out.ctypes.data + lo * 8)
            else:
                self.columns(ctypes.addressof(pointers), hi - lo, int(raw_score), out.ctypes.data + lo * 8)

        _split_rows(n, threads, part)
        return out


def _split_rows(n: int, threads: int, part) -> None:
    """Run ``part(lo, hi)`` over [0, n) on ``threads`` threads (fewer for small n). The rows are cut
    into chunks that the threads take in turn, so a thread slowed down by other work on the machine
    takes fewer chunks instead of holding the others up at the end."""
    threads = max(1, min(int(threads), n // _MIN_ROWS_PER_THREAD))
    if threads == 1:
        part(0, n)
        return
    chunk = max(_MIN_ROWS_PER_THREAD, n // (threads * 16))
    starts = iter(range(0, n, chunk))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                lo = next(starts, None)
            if lo is None:
                return
            try:
                part(lo, min(lo + chunk, n))
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)
                return

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]


class FastScorer:
    """Exact, fast single-row scoring of a LightGBM model (see the module docstring).

    ``score(row)`` -> probability (what ``booster.predict`` returns), ``raw_score(row)`` -> log-odds,
    ``contributions(row)`` -> TreeSHAP values (n_features + 1, the last is the bias), and
    ``reason_codes(row)`` -> the features pushing the score up, largest first.
    """

    def __init__(self, booster: lgb.Booster, feature_names: Sequence[str] | None = None, *,
                 backend: str = "auto", cache_dir: Path | str | None = None, verify: bool = True,
                 verify_rows: np.ndarray | None = None, verify_tolerance: float = 1e-12,
                 batch_kernel: str = "auto"):
        if backend not in ("auto", "compiled", "lightgbm"):
            raise ValueError(f"backend must be auto, compiled or lightgbm, not {backend!r}")
        if batch_kernel not in ("auto", "quickscorer", "rows"):
            raise ValueError(f"batch_kernel must be auto, quickscorer or rows, not {batch_kernel!r}")
        self._batch_kernel = batch_kernel
        self.booster = booster
        self.n_features = booster.num_feature()
        self.feature_names = list(feature_names) if feature_names is not None else booster.feature_name()
        if len(self.feature_names) != self.n_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {self.n_features} features")
        self._shape = (self.n_features,)
        # The iterations booster.predict uses by default (the best one if early stopping set it).
        self.num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        self._lock = threading.Lock()
        self._pools: dict[int, _FastConfigPool] = {}
        self._tls = threading.local()
        self._closed = False
        self.info: dict[str, object] = {"requested_backend": backend}
        self._compiled: _CompiledTrees | None = None
        if backend in ("auto", "compiled"):
            try:
                self._compiled = self._build_compiled(cache_dir, verify, verify_rows, verify_tolerance)
            except FastScorerError as exc:  # UnsupportedModel included
                if backend == "compiled" or batch_kernel == "quickscorer":  # asked for explicitly
                    raise
                self.info["fallback_reason"] = str(exc)
                log.warning("fast scorer: compiled trees unavailable (%s); using LightGBM's single-row "
                            "fast path", exc)
        self.backend = "compiled" if self._compiled is not None else "lightgbm"
        self.info["backend"] = self.backend
        if self._compiled is not None:
            self._predict_c = self._compiled.predict
            self._raw_c = self._compiled.raw
        else:
            self._score_pool = self._pool(_C_API_PREDICT_NORMAL)
            if verify:
                self._verify_lightgbm(verify_rows, verify_tolerance)

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def from_booster(cls, booster: lgb.Booster, feature_names: Sequence[str] | None = None,
                     **kwargs) -> FastScorer:
        return cls(booster, feature_names, **kwargs)

    @classmethod
    def from_model_file(cls, path: str | Path, feature_names: Sequence[str] | None = None,
                        **kwargs) -> FastScorer:
        """A LightGBM text model file (``booster.save_model`` / the MLflow flavour's ``model.lgb``)."""
        return cls(NativeBooster.from_file(path), feature_names, **kwargs)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, expected_features: list[str] | None = None,
                       **kwargs) -> FastScorer:
        """An MLflow LightGBM model directory, with the serving Scorer's schema checks."""
        from mlp_platform.runtime.scorer import Scorer

        scorer = Scorer.from_model_dir(Path(model_dir), expected_features)
        return cls(scorer.booster, scorer.feature_names, **kwargs)

    def _build_compiled(self, cache_dir, verify, verify_rows, tolerance) -> _CompiledTrees:
        model_str = self.booster.model_to_string(num_iteration=self.num_iteration)
        source, model = generate_c_source(model_str)
        if model.n_features != self.n_features:
            raise UnsupportedModel("feature count differs between the booster and its text model")
        lib_path, cached, seconds = compile_library(source, Path(cache_dir) if cache_dir else None,
                                                    source_parts=SOURCE_PARTS)
        compiled = _CompiledTrees(lib_path, self.n_features)
        self.info.update(library=str(lib_path), cache_hit=cached, compile_seconds=round(seconds, 3),
                         trees=len(model.trees))
        if verify:
            x = probe_rows(model)
            if verify_rows is not None:
                x = np.vstack([x, np.asarray(verify_rows, dtype=np.float64).reshape(-1, self.n_features)])
            expected = self.booster.predict(x, num_threads=1)
            got = np.concatenate([compiled.predict_matrix(x), compiled.predict_columns(list(x.T))])
            diff = float(np.max(np.abs(got - np.concatenate([expected, expected]))))  # NaN stays NaN
            raw_diff = float(np.max(np.abs(compiled.predict_matrix(x, raw_score=True)
                                           - self.booster.predict(x, raw_score=True, num_threads=1))))
            self.info.update(verified_rows=len(x), verify_max_abs_diff=diff, verify_raw_max_abs_diff=raw_diff)
            if not (diff <= tolerance and raw_diff <= tolerance):  # NaN-safe
                raise FastScorerError(f"compiled trees differ from booster.predict by {max(diff, raw_diff):.3g} "
                                      f"on {len(x)} probe rows")
        self._attach_batch_kernel(compiled, model, cache_dir, verify, verify_rows, tolerance)
        return compiled

    def _attach_batch_kernel(self, compiled: _CompiledTrees, model: _Model, cache_dir, verify, verify_rows,
                             tolerance) -> None:
        """Give the compiled trees the batch kernel (``score_batch`` / ``score_columns``), checked like
        the per-row code; if it is unavailable or differs, batches keep using the per-row code."""
        self.info["batch_kernel"] = "rows"
        if self._batch_kernel == "rows":
            return
        try:
            kernel = _BatchKernel(model, Path(cache_dir) if cache_dir else None)
            self.info.update(kernel.info)
            compiled.kernel = kernel
            if verify:
                x = probe_rows(model, seed=1)
                if verify_rows is not None:
                    x = np.vstack([x, np.asarray(verify_rows, dtype=np.float64).reshape(-1, self.n_features)])
                expected = self.booster.predict(x, num_threads=1)
                raw_expected = self.booster.predict(x, raw_score=True, num_threads=1)
                diff = max(float(np.max(np.abs(compiled.predict_batch(x) - expected))),
                           float(np.max(np.abs(compiled.predict_columns(list(x.T)) - expected))),
                           float(np.max(np.abs(compiled.predict_batch(x, raw_score=True) - raw_expected))))
                self.info.update(batch_verified_rows=len(x), batch_verify_max_abs_diff=diff)
                if not diff <= tolerance:  # NaN-safe
                    raise FastScorerError(f"batch kernel differs from booster.predict by {diff:.3g} on {len(x)} "
                                          f"probe rows")
        except FastScorerError as exc:  # UnsupportedModel included
            compiled.kernel = None
            if self._batch_kernel == "quickscorer":
                raise
            self.info["batch_kernel_fallback_reason"] = str(exc)
            log.warning("fast scorer: batch kernel unavailable (%s); batches use the per-row compiled code", exc)
            return
        self.info["batch_kernel"] = "quickscorer"

    def _verify_lightgbm(self, verify_rows, tolerance) -> None:
        x = probe_rows(_Model(self.n_features, "identity", 1.0, []), n_rows=64)
        if verify_rows is not None:
            x = np.vstack([x, np.asarray(verify_rows, dtype=np.float64).reshape(-1, self.n_features)])
        got = np.array([self.score(r) for r in x])
        diff = float(np.max(np.abs(got - self.booster.predict(x, num_threads=1))))
        self.info.update(verified_rows=len(x), verify_max_abs_diff=diff)
        if not diff <= tolerance:
            raise FastScorerError(f"LightGBM fast path differs from booster.predict by {diff:.3g}")

    def _pool(self, predict_type: int) -> _FastConfigPool:
        pool = self._pools.get(predict_type)
        if pool is None:
            with self._lock:
                if self._closed:
                    raise FastScorerError("the scorer is closed")
                pool = self._pools.get(predict_type)
                if pool is None:
                    out_size = self.n_features + 1 if predict_type == _C_API_PREDICT_CONTRIB else 1
                    pool = _FastConfigPool(self.booster, predict_type, self.num_iteration, self.n_features,
                                           out_size)
                    self._pools[predict_type] = pool
        return pool

    # -- scoring ------------------------------------------------------------------------------------

    def _row(self, row) -> np.ndarray:
        arr = np.asarray(row, dtype=np.float64).reshape(-1)
        if arr.shape != self._shape:
            raise ValueError(f"expected {self.n_features} feature values, got {arr.size}")
        return arr

    def _buffer(self) -> tuple[np.ndarray, int]:
        buf = np.zeros(self.n_features, dtype=np.float64)
        self._tls.io = (buf, buf.ctypes.data)
        return self._tls.io

    def score(self, row: np.ndarray) -> float:
        """The model's score for one row of ``n_features`` values (== booster.predict)."""
        try:
            if row.shape != self._shape:
                row = self._row(row)
        except AttributeError:  # not an ndarray
            row = self._row(row)
        if self._compiled is None:
            return float(self._score_pool.predict_into(row)[0])
        try:
            buf, ptr = self._tls.io
        except AttributeError:
            buf, ptr = self._buffer()
        buf[:] = row
        return self._predict_c(ptr)

    def raw_score(self, row: np.ndarray) -> float:
        """The raw score (log-odds for a binary model), == booster.predict(raw_score=True)."""
        row = self._row(row)
        if self._compiled is None:
            return float(self._pool(_C_API_PREDICT_RAW_SCORE).predict_into(row)[0])
        try:
            buf, ptr = self._tls.io
        except AttributeError:
            buf, ptr = self._buffer()
        buf[:] = row
        return self._raw_c(ptr)

    def score_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of many rows (batch; the compiled trees, or booster.predict on one thread)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a (n, {self.n_features}) matrix, got {x.shape}")
        if self._compiled is not None:
            return self._compiled.predict_matrix(x)
        return self.booster.predict(x, num_threads=1, num_iteration=self.num_iteration)

    def score_batch(self, x: np.ndarray, threads: int = 1, raw_score: bool = False) -> np.ndarray:
        """Scores of a whole day's matrix (nightly batch scoring): the compiled trees in C, the rows cut
        into chunks taken in turn by ``threads`` threads (each C call releases the GIL); equal to
        ``booster.predict`` exactly like ``score``. On the ``lightgbm`` backend: ``booster.predict``
        with ``num_threads=threads``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a (n, {self.n_features}) matrix, got {x.shape}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if self._compiled is not None:
            return self._compiled.predict_batch(x, raw_score=raw_score, threads=threads)
        return self.booster.predict(x, num_threads=threads, num_iteration=self.num_iteration, raw_score=raw_score)

    def score_columns(self, columns: Sequence[np.ndarray], threads: int = 1) -> np.ndarray:
        """``score_batch`` for rows given column by column (one float64 array per feature, in feature
        order, NaN for missing), e.g. straight from an Arrow table: no row-major matrix is built."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if self._compiled is not None:
            return self._compiled.predict_columns(columns, threads=threads)
        return self.score_batch(np.column_stack([np.asarray(c, dtype=np.float64) for c in columns]), threads)

    def contributions(self, row: np.ndarray) -> np.ndarray:
        """TreeSHAP feature contributions in log-odds: n_features values then the bias (expected value).

        Equal to ``booster.predict(row, pred_contrib=True)``; they sum to ``raw_score(row)``.
        """
        return self._pool(_C_API_PREDICT_CONTRIB).predict_into(self._row(row)).copy()

    def reason_codes(self, row: np.ndarray, feature_names: Sequence[str] | None = None,
                     top: int = 3) -> list[tuple[str, float]]:
        """The features pushing this row towards fraud: (name, contribution), largest first.

        Only strictly positive contributions count (a row with none has no reason codes); ties keep
        the feature order.
        """
        names = list(feature_names) if feature_names is not None else self.feature_names
        if len(names) != self.n_features:
            raise ValueError(f"{len(names)} feature names for {self.n_features} features")
        contrib = self.contributions(row)[:-1]
        order = np.argsort(-contrib, kind="stable")
        out = []
        for i in order[:max(top, 0)]:
            if not contrib[i] > 0:
                break
            out.append((names[i], float(contrib[i])))
        return out

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the LightGBM FastConfig handles; no call may be in flight.

        Afterwards ``contributions`` (and, on the ``lightgbm`` backend, ``score`` / ``raw_score``)
        raise ``FastScorerError``; the compiled trees hold no handle and keep working.
        """
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def __enter__(self) -> FastScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter teardown: nothing useful to do
            self.close()

    def __repr__(self) -> str:
        return (f"FastScorer(backend={self.backend!r}, n_features={self.n_features}, "
                f"num_iteration={self.num_iteration})")
