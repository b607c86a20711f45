"""Failure injection for the local backend: ``trainingjob run JOB.yaml --inject-failures SPEC``.

PURE: parsing and planning only. The local supervisor owns the clock and the signals; it asks
:func:`due` each tick which planned injections have come due and sends them (SIGKILL for a crash,
SIGSTOP for a hang, which the heartbeat timeout must then detect).

Grammar of ``SPEC`` (comma-separated items, whitespace around items ignored)::

    role/rank@TIME[:stop|:kill]                 e.g. embedding-server/1@60s,trainer/0@2m:stop
    random:ROLE|any:mtbf=DURATION[:seed=INT][:until=DURATION][:stop|:kill]
                                                e.g. random:embedding-server:mtbf=120s:seed=7

``TIME`` and ``DURATION`` are a non-negative number with an optional unit: ``ms``, ``s`` (default),
``m`` or ``h`` (``90``, ``60s``, ``1.5m``). Roles are the TrainingJob roles (``trainer``,
``embedding-server``, ``sync-server``); ``any`` means every replica of every role.

Random items model CPR's emulation (PAPERS.md §1.8 [R]): each replica fails as an independent
Poisson process with the given MTBF. A replaced replica keeps the same rank and, the process being
memoryless, the same failure rate, so one Poisson stream per rank models a replica and all its
replacements. Each rank draws from its own stream, seeded from ``(seed, role, rank)`` [I], so
adding a replica or another item never changes the times already planned for the others.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from trainingjob_operator.api.spec import Role

Signal = Literal["KILL", "STOP"]
ROLES: tuple[str, ...] = tuple(r.value for r in Role)
ANY_ROLE = "any"

_DURATION = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIGNALS: dict[str, Signal] = {"kill": "KILL", "stop": "STOP"}


class InjectionSpecError(ValueError):
    """A ``--inject-failures`` item that does not parse or does not fit the job; one line, names the item."""

    def __init__(self, item: str, problem: str) -> None:
        super().__init__(f"inject-failures item {item!r}: {problem}")
        self.item = item
        self.problem = problem


@dataclasses.dataclass(frozen=True, slots=True)
class Injection:
    """One planned failure: at ``time_s`` after the job started, send ``signal`` to ``role``/``rank``."""

    time_s: float
    role: str
    rank: int
    signal: Signal = "KILL"


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduledItem:
    """``role/rank@TIME``: one failure at a fixed time."""

    text: str
    role: str
    rank: int
    time_s: float
    signal: Signal = "KILL"


@dataclasses.dataclass(frozen=True, slots=True)
class RandomItem:
    """``random:ROLE:mtbf=...``: Poisson failures of every replica of ``role`` (``any``: every role)."""

    text: str
    role: str
    mtbf_s: float
    seed: int = 0
    until_s: float | None = None
    signal: Signal = "KILL"


InjectionItem = ScheduledItem | RandomItem


# -- parsing --------------------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``"90"`` -> 90.0, ``"60s"`` -> 60.0, ``"1.5m"`` -> 90.0, ``"2h"``, ``"500ms"``; ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 90, 60s, 1.5m, 2h or 500ms")
    return float(match["number"]) * _UNIT_S[match["unit"] or "s"]


def parse_injection_spec(spec: str) -> list[InjectionItem]:
    """Parse the whole ``--inject-failures`` value; raises :class:`InjectionSpecError` on the first bad item."""
    if not spec.strip():
        raise InjectionSpecError(spec, "empty; expected items like trainer/0@60s or random:any:mtbf=120s")
    return [parse_injection_item(part.strip()) for part in spec.split(",")]


def parse_injection_item(item: str) -> InjectionItem:
    """Parse one comma-separated item (already stripped)."""
    if not item:
        raise InjectionSpecError(item, "empty item (stray comma?)")
    if item.startswith("random:"):
        return _parse_random(item)
    return _parse_scheduled(item)


def _parse_role(item: str, role: str, allow_any: bool) -> str:
    allowed = (*ROLES, ANY_ROLE) if allow_any else ROLES
    if role not in allowed:
        raise InjectionSpecError(item, f"unknown role {role!r}, expected one of {', '.join(allowed)}")
    return role


def _parse_signal(item: str, token: str) -> Signal:
    signal = _SIGNALS.get(token)
    if signal is None:
        raise InjectionSpecError(item, f"unknown signal suffix {token!r}, expected 'stop' (hang) or 'kill' (crash)")
    return signal


def _parse_time(item: str, what: str, text: str, positive: bool = False) -> float:
    try:
        value = parse_duration(text)
    except ValueError:
        raise InjectionSpecError(item, f"{what} {text!r} is not a duration like 90, 60s, 1.5m or 2h") from None
    if positive and value <= 0:
        raise InjectionSpecError(item, f"{what} must be greater than 0")
    return value


def _parse_scheduled(item: str) -> ScheduledItem:
    head, _, suffix = item.partition(":")
    signal = _parse_signal(item, suffix) if suffix else "KILL"
    who, at, when = head.partition("@")
    if not at:
        raise InjectionSpecError(item, "expected role/rank@time (e.g. trainer/0@60s) or random:ROLE:mtbf=DURATION")
    role, slash, rank_text = who.partition("/")
    if not slash:
        raise InjectionSpecError(item, "expected role/rank before '@' (e.g. embedding-server/1@60s)")
    _parse_role(item, role, allow_any=False)
    if not rank_text.isdigit():
        raise InjectionSpecError(item, "rank must be an integer")
    return ScheduledItem(item, role, int(rank_text), _parse_time(item, "time", when), signal)


def _parse_random(item: str) -> RandomItem:
    _, role_text, *tokens = item.split(":")
    role = _parse_role(item, role_text, allow_any=True)
    options: dict[str, str] = {}
    signal: Signal = "KILL"
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq:
            signal = _parse_signal(item, token)
        elif key in ("mtbf", "seed", "until") and key not in options:
            options[key] = value
        else:
            problem = "repeated" if key in options else "unknown"
            raise InjectionSpecError(item, f"{problem} option {key!r}, expected mtbf=, seed=, until=")
    if "mtbf" not in options:
        raise InjectionSpecError(item, "missing mtbf=DURATION (e.g. random:embedding-server:mtbf=120s:seed=7)")
    seed_text = options.get("seed", "0")
    if not seed_text.isdigit():
        raise InjectionSpecError(item, f"seed {seed_text!r} must be a non-negative integer")
    until = _parse_time(item, "until", options["until"], positive=True) if "until" in options else None
    return RandomItem(item, role, _parse_time(item, "mtbf", options["mtbf"], positive=True),
                      int(seed_text), until, signal)


# -- planning -------------------------------------------------------------------------------------------


def plan_injections(
    items: Sequence[InjectionItem], replicas: Mapping[str, int], horizon_s: float
) -> list[Injection]:
    """Every planned injection, sorted by (time, role, rank); deterministic for given seeds.

    ``replicas`` maps role -> replica count (roles absent or at 0 have no replicas). ``horizon_s``
    bounds the random items only (together with their own ``until``); a scheduled item is kept even
    past the horizon, because the user asked for it explicitly and the run may outlast the estimate.
    Raises :class:`InjectionSpecError` when a scheduled rank does not exist or a random item's role
    has no replicas.
    """
    planned: list[Injection] = []
    for item in items:
        if isinstance(item, ScheduledItem):
            planned.append(_plan_scheduled(item, replicas))
        else:
            planned.extend(_plan_random(item, replicas, horizon_s))
    return sorted(planned, key=lambda i: (i.time_s, i.role, i.rank, i.signal))


def _plan_scheduled(item: ScheduledItem, replicas: Mapping[str, int]) -> Injection:
    count = replicas.get(item.role, 0)
    if not 0 <= item.rank < count:
        ranks = {0: "", 1: " (rank 0)"}.get(count, f" (ranks 0-{count - 1})")
        have = f"{count} replica{'' if count == 1 else 's'}{ranks}"
        raise InjectionSpecError(item.text, f"rank {item.rank} out of range, {item.role} has {have}")
    return Injection(item.time_s, item.role, item.rank, item.signal)


def _plan_random(item: RandomItem, replicas: Mapping[str, int], horizon_s: float) -> list[Injection]:
    roles = [r for r in ROLES if replicas.get(r, 0) > 0] if item.role == ANY_ROLE else [item.role]
    if not roles or replicas.get(roles[0], 0) <= 0:
        raise InjectionSpecError(item.text, f"role {item.role} has no replicas in this job")
    end = horizon_s if item.until_s is None else min(horizon_s, item.until_s)
    return [Injection(t, role, rank, item.signal)
            for role in roles for rank in range(replicas[role])
            for t in poisson_times(item.mtbf_s, end, random.Random(f"{item.seed}:{role}:{rank}"))]


def poisson_times(mtbf_s: float, end_s: float, rng: random.Random) -> list[float]:
    """Arrival times in ``[0, end_s)`` of a Poisson process with mean gap ``mtbf_s`` (exponential gaps)."""
    times: list[float] = []
    t = rng.expovariate(1.0 / mtbf_s)
    while t < end_s:
        times.append(t)
        t += rng.expovariate(1.0 / mtbf_s)
    return times


def due(injections: Sequence[Injection], elapsed_s: float, already_done: int) -> list[Injection]:
    """The injections that came due by ``elapsed_s`` and were not sent yet.

    ``injections`` is :func:`plan_injections`' sorted list and ``already_done`` how many of its
    head the caller has sent; the caller adds ``len(result)`` to it after sending them.
    """
    pending = injections[already_done:]
    count = next((i for i, injection in enumerate(pending) if injection.time_s > elapsed_s), len(pending))
    return list(pending[:count])
