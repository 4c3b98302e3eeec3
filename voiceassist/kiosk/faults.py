"""A named fault injector: a wrapper backend that makes chosen turns fail, to test that the kiosk survives.

Not a mock: the real backend (the tiny Qwen2-Audio session in tests) runs every turn; on a chosen turn the
injector raises from inside the reply stream (after the first text piece, by default), exactly where a real
failure interrupts generation, so the session must roll back a half-generated reply.

Enabled only through the environment, never by configuration a visitor could reach:

    VOICEASSIST_FAULT_INJECT=model:turns=2,5:kind=oom:at=token

- ``turns``: 1-based numbers of ``reply()`` calls since the process started that fail
- ``kind``: ``error`` (RuntimeError), ``oom`` (torch.OutOfMemoryError, as CUDA raises it; MemoryError without
  torch), ``backend`` (BackendError, what a well-behaved backend raises)
- ``at``: ``token`` (raise in the text stream, mid-reply; default) or ``start`` (before the backend runs)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from voiceassist.backend import Backend, BackendWrapper, ReplyResult, UserTurn
from voiceassist.errors import BackendError, ConfigError

ENV = "VOICEASSIST_FAULT_INJECT"


@dataclass(frozen=True)
class FaultPlan:
    """Which reply() calls fail, how, and where."""

    turns: frozenset[int]
    kind: str = "error"  # "error" | "oom" | "backend"
    at: str = "token"  # "token" | "start"


def parse_plan(spec: str) -> FaultPlan | None:
    """``model:turns=2,5:kind=oom:at=token`` → FaultPlan; "" → None; raises ConfigError when malformed."""
    spec = spec.strip()
    if not spec:
        return None
    target, *parts = spec.split(":")
    values = dict(p.split("=", 1) for p in parts if "=" in p)
    try:
        if target != "model" or len(values) != len(parts) or set(values) - {"turns", "kind", "at"}:
            raise ValueError
        turns = frozenset(int(x) for x in values.get("turns", "").split(",") if x.strip())
        plan = FaultPlan(turns, values.get("kind", "error"), values.get("at", "token"))
        if not turns or plan.kind not in ("error", "oom", "backend") or plan.at not in ("token", "start"):
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{ENV}={spec!r} is not a fault plan; use e.g. model:turns=2,5:kind=oom:at=token "
            "(kind error|oom|backend, at token|start)"
        ) from None
    return plan


class InjectedFault(RuntimeError):
    """Raised by the injector with kind=error."""


def _make_error(kind: str, n: int) -> BaseException:
    message = f"injected fault on turn {n} ({ENV})"
    if kind == "backend":
        return BackendError(message)
    if kind == "oom":
        try:
            import torch

            return torch.OutOfMemoryError(f"CUDA out of memory (simulated: {message})")
        except (ImportError, AttributeError):
            return MemoryError(message)
    return InjectedFault(message)


class FaultInjectingBackend(BackendWrapper):
    """Wraps a Backend; ``reply()`` fails on the planned calls and delegates everything else."""

    def __init__(self, inner: Backend, plan: FaultPlan) -> None:
        super().__init__(inner)
        self.plan = plan
        self.calls = 0
        self.injected = 0
        self._lock = threading.Lock()

    def reply(self, turn: UserTurn, on_text: Callable[[str], None], cancel: threading.Event) -> ReplyResult:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n not in self.plan.turns:
            return self.inner.reply(turn, on_text, cancel)
        if self.plan.at == "start":
            self.injected += 1
            raise _make_error(self.plan.kind, n)

        def failing_on_text(piece: str) -> None:
            on_text(piece)
            self.injected += 1  # counted only when raised: a reply with no text gets no fault
            raise _make_error(self.plan.kind, n)

        return self.inner.reply(turn, failing_on_text, cancel)


def wrap_from_env(backend: Backend) -> Backend:
    """The backend, wrapped when ``$VOICEASSIST_FAULT_INJECT`` asks for it."""
    plan = parse_plan(os.environ.get(ENV, ""))
    return FaultInjectingBackend(backend, plan) if plan else backend
