"""When the fused kernels run: the on/off switch, the Triton guard, and fallback reports.

The switch is ``FRAMEWIRE_KERNELS`` (default on; ``0``/``false``/``off``/``no`` turns every
op into its torch reference). It is read once, on first use, unless the composition root
has already called :func:`configure` with the server's settings. Nothing on a hot path reads
the environment.

This module imports only the standard library, so the server's command line can configure
it without loading torch.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

ENV_VAR = "FRAMEWIRE_KERNELS"

log = logging.getLogger("framewire.kernels")

_lock = threading.Lock()
_enabled: bool | None = None
_reported: set[tuple[str, str]] = set()
_cpu_interpreter = False


def parse_switch(raw: str) -> bool:
    """The value of ``FRAMEWIRE_KERNELS``: the same words the server's boolean settings take."""
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{ENV_VAR}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def configure(*, enabled: bool) -> None:
    """Set the switch explicitly (the server does this once at start, from its settings)."""
    global _enabled
    with _lock:
        _enabled = enabled


def enabled() -> bool:
    """Whether the fused kernels may run; the environment is read on the first call only."""
    global _enabled
    if _enabled is None:
        with _lock:
            if _enabled is None:
                _enabled = parse_switch(os.environ.get(ENV_VAR, "1"))
    return _enabled


@functools.cache
def _interpreted_type() -> type | None:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return None
    kind: type = InterpretedFunction
    return kind


def interpreted(kernel: Any) -> bool:
    """True when ``kernel`` was built by Triton's interpreter (``TRITON_INTERPRET=1``), which runs on CPU tensors."""
    kind = _interpreted_type()
    return kind is not None and isinstance(kernel, kind)


OFF = f"the fused kernels are off ({ENV_VAR}=0)"
NO_TRITON = "triton is not installed"
NOT_CUDA = "tensors not on CUDA; compiled Triton kernels need a CUDA device"


def allow_cpu_interpreter(allowed: bool) -> None:
    """Let interpreted kernels (``TRITON_INTERPRET=1``) run on CPU tensors: for the kernels' own tests.

    Off by default, so that an environment which happens to set ``TRITON_INTERPRET`` never
    swaps a CPU engine onto the (very slow) interpreter instead of the torch references.
    """
    global _cpu_interpreter
    _cpu_interpreter = allowed


def triton_blocker(kernel: Any, tensors: Iterable[Any]) -> str | None:
    """Why ``kernel`` cannot run on ``tensors`` (one of a few fixed phrases), or None when it can.

    ``kernel`` is None when Triton is not installed. An interpreted kernel also runs on CPU
    tensors once :func:`allow_cpu_interpreter` has allowed it.
    """
    if not enabled():
        return OFF
    on_cuda = all(tensor.device.type == "cuda" for tensor in tensors)
    if kernel is not None and interpreted(kernel) and (on_cuda or _cpu_interpreter):
        return None
    if not on_cuda:
        return NOT_CUDA
    if kernel is None:
        return NO_TRITON
    return None


def report_fallback(op: str, reason: str) -> None:
    """Log, once per (op, reason), that ``op`` runs its torch reference instead of its kernel.

    ``reason`` must come from a small fixed set (never shapes or values), so this stays
    bounded. Falling back on CUDA is a performance surprise (a warning); with the switch off
    it is what was asked for (info); on a CPU-only engine it is the only path, which the
    engine's ready line already names (debug: a CPU start stays quiet).
    """
    key = (op, reason)
    with _lock:
        if key in _reported:
            return
        _reported.add(key)
    log.log(fallback_level(reason), "%s runs its torch reference: %s", op, reason)


def fallback_level(reason: str) -> int:
    """The log level of a kernel falling back for ``reason`` (see :func:`report_fallback`)."""
    if reason == NOT_CUDA:
        return logging.DEBUG
    return logging.INFO if reason == OFF else logging.WARNING


def forget_reports() -> None:
    """Let every fallback be reported again (tests, and a server that reconfigures)."""
    with _lock:
        _reported.clear()
