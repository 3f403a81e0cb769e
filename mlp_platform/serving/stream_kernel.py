"""The compiled stream kernel: a streaming view's features from a packed Redis history, in one C call.

What it replaces: for every Redis-backed transaction the store splits the script's reply (the
customer's events in the lookback, joined by ``\\x1f``) into Python lists and computes the windows
from them (:func:`~mlp_platform.serving.online_store.parse_packed` +
:func:`~mlp_platform.serving.online_store.compute_stream`, the reference). That Python work grows
with the history (about 0.5 us per event) and was a fifth of the scoring service's time under load.
``stream_kernel.c`` does both in C, reading the reply in place.

Exactness: the kernel returns the reference's values with the reference's Python types (ints for
counts, floats for sums and means, None where the reference has None). Sums add in the same order
into a double as CPython's ``sum()`` of floats does; numbers are parsed by ``PyOS_string_to_double``,
which ``float()`` uses. Input outside the canonical form the store writes (see the C file) is handed
back to the reference, never guessed at. On load the kernel is checked against the reference on
generated histories (ties, nulls, duplicates, empty windows, non-ASCII values, non-canonical
numbers); any difference and the store keeps the reference. ``tests/test_stream_kernel.py`` checks
the same property on many more histories.

Build: compiled once per C source, compiler and Python version with the machine's C compiler and
the Python headers into the compiled-code cache (``MLP_FAST_SCORER_CACHE``, as the tree scorer), and
loaded as an extension module. No compiler, no headers, a failed check, or ``MLP_STREAM_KERNEL=0``:
the reference is used (logged once); the features are the same either way, only slower.

Serving-path module: standard library only (plus the project's own compile helper).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import random
import sys
import sysconfig
import threading
from pathlib import Path

from mlp_platform.settings import switched_on

log = logging.getLogger(__name__)

SOURCE_PATH = Path(__file__).with_name("stream_kernel.c")
_MODULE_NAME = "_mlp_stream_kernel"
#: Kernel operation codes (stream_kernel.c); the store maps its own operations onto these.
OP_COUNT, OP_SUM, OP_MEAN, OP_MAX, OP_DISTINCT, OP_SINCE_PREV, OP_FIRST, OP_RATIO = range(8)

_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    return switched_on("MLP_STREAM_KERNEL")


def build(cache_dir: Path | None = None):
    """Compile (or take from the cache) and import the kernel module. Raises when it cannot."""
    from mlp_platform.runtime.fast_scorer import compile_library

    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        raise RuntimeError(f"no Python headers at {include}")
    # the Python version is part of the source, hence of the cache key
    source = f"/* built for Python {sys.version} */\n" + SOURCE_PATH.read_text()
    path, _, _ = compile_library(source, cache_dir, cflags=("-O2", "-fPIC", "-shared", "-fno-fast-math",
                                                            "-ffp-contract=off", f"-I{include}"),
                                 name="stream_kernel")
    loader = importlib.machinery.ExtensionFileLoader(_MODULE_NAME, str(path))
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def load():
    """The kernel module, built once per process; None when it is switched off or cannot be built
    (logged once). Each plan is checked against the reference when the store prepares it
    (:func:`mlp_platform.serving.online_store.stream_kernel_for`)."""
    if not enabled():
        return None
    with _lock:
        if "module" not in _state:
            try:
                _state["module"] = build()
            except Exception as err:  # no compiler, no headers: the reference serves
                log.warning("stream kernel unavailable, features computed in Python: %s", err)
                _state["module"] = None
        return _state["module"]


def random_packed_history(rng: random.Random, t: int, tid: str, numeric: tuple[bool, ...],
                          windows_us: tuple[int, ...], max_events: int = 60) -> str:
    """A packed history (members joined by ``\\x1f``, times ascending) for checks: events on and
    around every window's edge, ties at ``t`` before and after ``tid``, nulls, repeated, empty and
    non-ASCII values."""
    deltas = [0, 0, 1, 2]
    for w in windows_us:
        deltas += [w - 1, w, w + 1]
    longest = max(windows_us, default=3_600_000_000)
    times = sorted(t - (rng.choice(deltas) if rng.random() < 0.5 else rng.randrange(longest + 2))
                   for _ in range(rng.randrange(max_events + 1)))
    events = []
    for j, et in enumerate(times):
        other = tid if rng.random() < 0.1 else rng.choice([f"A{j:04d}", f"Z{j:04d}", f"{tid}0", tid[:-1]])
        fields = [other, str(et)]
        for is_numeric in numeric:
            if rng.random() < 0.08:
                fields.append("\x00")
            elif is_numeric:
                fields.append(repr(rng.choice([0.0, -0.0, 1.5, 1e-7, 123456.789, 1e22, rng.uniform(-1e3, 1e6),
                                               float(rng.randrange(100))])))
            else:
                fields.append(rng.choice(["M1", "M2", "M3", "M1 ", "", "\u00e9", "D-\u00fc", "\U0001f600"]))
        events.append("\x1f".join(fields))
    return "\x1f".join(events)
