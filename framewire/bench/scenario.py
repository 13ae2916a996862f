"""Scenarios (one load shape against one or more targets), sweeps over them, and the
goals FrameWire reports against. Pure: no I/O, so expansion and verdicts are testable.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framewire.bench.loadgen import Mode
from framewire.bench.servers import FRAMEWIRE, STARLETTE, TARGETS, ServerConfig

#: Scenario fields a sweep may vary, with how a command-line list item is parsed.
SWEEPABLE: dict[str, type] = {
    "app": str,
    "sessions": int,
    "fps": float,
    "payload_bytes": int,
    "max_batch_size": int,
    "max_queue_delay_ms": float,
}


@dataclass(frozen=True)
class Scenario:
    """One load shape. ``inputs`` overrides app input fields (values JSON-encoded so the
    scenario stays hashable)."""

    name: str = ""
    app: str = "framewire/echo"
    sessions: int = 16
    mode: Mode = Mode.CLOSED
    fps: float = 15.0
    inflight: int = 1
    payload_bytes: int = 48_000
    image_px: int = 512
    warmup_s: float = 2.0
    window_s: float = 10.0
    drain_s: float = 3.0
    max_buffering: int | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    inputs: tuple[tuple[str, str], ...] = ()
    targets: tuple[str, ...] = TARGETS
    group: str = ""
    procs: int = 1  # generator processes sharing the sessions

    def __post_init__(self) -> None:
        for target in self.targets:
            if target not in TARGETS:
                raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
        if not self.targets:
            raise ValueError("a scenario needs at least one target")
        if self.sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {self.sessions}")
        if self.payload_bytes < 64:
            raise ValueError(f"payload must be at least 64 bytes, got {self.payload_bytes}")
        if not 1 <= self.procs <= self.sessions:
            raise ValueError(f"procs must be within 1..sessions ({self.sessions}), got {self.procs}")
        if self.max_buffering is not None and not 1 <= self.max_buffering <= 60:
            raise ValueError(f"max_buffering must be 1..60, got {self.max_buffering}")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())

    def default_name(self) -> str:
        app = self.app.rsplit("/", 1)[-1]
        load = f"{self.sessions} sessions " + (f"x {self.fps:g} fps" if self.mode is Mode.OPEN else "closed loop")
        parts = [app, load, f"{self.payload_bytes / 1000:g}KB"]
        if self.max_batch_size is not None:
            parts.append(f"batch<={self.max_batch_size}")
        if self.max_queue_delay_ms is not None:
            parts.append(f"delay {self.max_queue_delay_ms:g}ms")
        if self.procs > 1:
            parts.append(f"({self.procs} generators)")
        return " ".join(parts)

    @property
    def input_overrides(self) -> dict[str, Any]:
        return {name: json.loads(value) for name, value in self.inputs}

    def query(self) -> str:
        return f"max_buffering={self.max_buffering}" if self.max_buffering is not None else ""

    def server_config(self, target: str, builtin: str | None, extra_args: Sequence[str] = ()) -> ServerConfig:
        """The server ``target`` needs for this scenario (baselines ignore app settings)."""
        if target != FRAMEWIRE:
            return ServerConfig(target)
        return ServerConfig(
            FRAMEWIRE,
            builtin_apps=(builtin,) if builtin else (),
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            extra_args=tuple(extra_args),
        )

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mode"] = str(self.mode)
        out["inputs"] = self.input_overrides
        out["targets"] = list(self.targets)
        return out


def with_inputs(scenario: Scenario, overrides: Mapping[str, Any]) -> Scenario:
    encoded = tuple(sorted((k, json.dumps(v)) for k, v in overrides.items()))
    return dataclasses.replace(scenario, inputs=encoded)


def parse_list(text: str, kind: type) -> list[Any]:
    """``"1,4,16"`` → ``[1, 4, 16]``; raises ``ValueError`` naming the bad item."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("empty list")
    out = []
    for item in items:
        try:
            out.append(kind(item))
        except ValueError:
            raise ValueError(f"{item!r} is not a valid {kind.__name__}") from None
    return out


def expand(base: Scenario, axes: Mapping[str, Sequence[Any]], group: str = "") -> list[Scenario]:
    """Every combination of the ``axes`` values applied to ``base``, first axis outermost.

    Names are regenerated so each scenario says what it varies.
    """
    for name in axes:
        if name not in SWEEPABLE:
            raise ValueError(f"cannot sweep {name!r}; choose from {', '.join(SWEEPABLE)}")
    names = list(axes)
    unique = {n: list(dict.fromkeys(axes[n])) for n in names}  # "1,4,1" runs 1 and 4 once each
    out = []
    for values in itertools.product(*(unique[n] for n in names)):
        changes = dict(zip(names, values, strict=True))
        out.append(dataclasses.replace(base, name="", group=group or base.group, **changes))
    return out


def varying(scenarios: Iterable[Scenario]) -> list[str]:
    """The sweepable fields whose value differs between ``scenarios``."""
    found = list(scenarios)
    return [f for f in SWEEPABLE if len({getattr(s, f) for s in found}) > 1]


# -- the goals ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    goal: str
    passed: bool | None  # None: not measured (a target missing or no output)
    measured: str
    wanted: str
    note: str = ""


def _get(summaries: Mapping[tuple[str, str], Mapping[str, Any]], scenario: str, target: str) -> Mapping[str, Any]:
    return summaries.get((scenario, target), {})


def problems(summary: Mapping[str, Any]) -> int:
    """Errors of any kind in a summary: frame errors, bad outputs, lost frames, session
    errors. Dropped frames are not errors: dropping is the buffer policy at work."""
    tally = summary.get("tally", {})
    return int(
        sum(tally.get("errors", {}).values())
        + tally.get("lost", 0)
        + tally.get("bad_outputs", 0)
        + sum(summary.get("session_errors", {}).values())
    )


CLOSED_16 = "goal: 16 sessions closed loop"
OPEN_64 = "goal: 64 sessions x 15 fps"
HOLD_256 = "goal: 256 sessions x 2 fps held"


def goal_scenarios(quick: bool = False) -> list[Scenario]:
    """The three goal scenarios (echo app, 48 KB JPEG frames). ``quick`` shortens the
    windows for a fast look; only the full version is reported as the goals."""
    window = 3.0 if quick else 10.0
    hold = 10.0 if quick else 60.0
    return [
        Scenario(CLOSED_16, sessions=16, mode=Mode.CLOSED, window_s=window, group="goals"),
        Scenario(OPEN_64, sessions=64, mode=Mode.OPEN, fps=15.0, window_s=window, group="goals"),
        Scenario(HOLD_256, sessions=256, mode=Mode.OPEN, fps=2.0, window_s=hold, targets=(FRAMEWIRE,), group="goals"),
    ]


def sessions_sweep(quick: bool = False) -> list[Scenario]:
    """Throughput and p99 against sessions (closed loop), for the plot."""
    base = Scenario(mode=Mode.CLOSED, warmup_s=1.0, window_s=2.0 if quick else 5.0, drain_s=2.0)
    return expand(base, {"sessions": [1, 4, 16, 64, 256]}, group="sessions")


def evaluate(summaries: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[Verdict]:
    """Verdicts for the three goals from per-(scenario, target) summaries."""
    verdicts = []

    fw, base = _get(summaries, CLOSED_16, FRAMEWIRE), _get(summaries, CLOSED_16, STARLETTE)
    if fw.get("throughput_fps") and base.get("throughput_fps"):
        r = fw["throughput_fps"] / base["throughput_fps"]
        note = ""
        if base.get("client_cpu_pct", 0) >= 90:
            note = "the load generator used a whole core on the baseline: the ratio is bounded by the client"
        verdicts.append(
            Verdict(
                "closed loop, 16 sessions: frames/s vs same-stack baseline",
                r >= 0.5,
                f"{r:.2f}x ({fw['throughput_fps']:.0f} vs {base['throughput_fps']:.0f} frames/s)",
                ">= 0.5x",
                note,
            )
        )
    else:
        verdicts.append(Verdict("closed loop, 16 sessions: frames/s vs same-stack baseline", None, "n/a", ">= 0.5x"))

    fw, base = _get(summaries, OPEN_64, FRAMEWIRE), _get(summaries, OPEN_64, STARLETTE)
    fw_lat, base_lat = fw.get("latency_ms", {}), base.get("latency_ms", {})
    if fw_lat.get("count") and base_lat.get("count"):
        r = fw_lat["p50"] / base_lat["p50"]
        verdicts.append(
            Verdict(
                "open loop, 64 x 15 fps: p50 vs same-stack baseline",
                r <= 1.5,
                f"{r:.2f}x ({fw_lat['p50']:.2f} vs {base_lat['p50']:.2f} ms)",
                "<= 1.5x",
            )
        )
    else:
        verdicts.append(Verdict("open loop, 64 x 15 fps: p50 vs same-stack baseline", None, "n/a", "<= 1.5x"))
    if fw_lat.get("count"):
        verdicts.append(
            Verdict("open loop, 64 x 15 fps: p99", fw_lat["p99"] <= 10.0, f"{fw_lat['p99']:.2f} ms", "<= 10 ms")
        )
        n = problems(fw)
        verdicts.append(Verdict("open loop, 64 x 15 fps: errors", n == 0, str(n), "0"))
    else:
        verdicts.append(Verdict("open loop, 64 x 15 fps: p99", None, "n/a", "<= 10 ms"))

    fw = _get(summaries, HOLD_256, FRAMEWIRE)
    if fw.get("tally", {}).get("sent"):
        n = problems(fw)
        verdicts.append(Verdict("256 x 2 fps held: errors", n == 0, str(n), "0"))
        growth = fw.get("server", {}).get("rss_growth_mb")
        if growth is None:
            verdicts.append(Verdict("256 x 2 fps held: server RSS growth", None, "n/a (no server pid)", "< 50 MB"))
        else:
            verdicts.append(
                Verdict("256 x 2 fps held: server RSS growth", growth < 50.0, f"{growth:+.1f} MB", "< 50 MB")
            )
    else:
        verdicts.append(Verdict("256 x 2 fps held: errors", None, "n/a", "0"))
    return verdicts
