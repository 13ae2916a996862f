"""framewire bench: drive FrameWire and the baselines with the same load in one run,
and report numbers, ratios, plots and (for goals) benchmarks/RESULTS.md.

    framewire bench run --sessions 1,16,64 --mode closed      # a sweep, every target
    framewire bench run --mode open --sessions 64 --fps 15 --targets framewire,starlette
    framewire bench goals                                     # the goals; rewrites RESULTS.md
    framewire bench plot benchmarks/out/<run>/results.json    # redraw plots from JSON
    framewire bench workers                                   # engine worker processes (own flags)
    framewire bench link                                      # the edge-worker link's transport
    framewire bench scheduler                                 # overload and idle-canvas scenarios

Every target runs the same scenario one after the other (never at the same time), each
server in its own process; with ``--repeats`` the order rotates between repeats so slow
drift of a shared machine does not always hit the same target.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from framewire.bench import loadgen, payload, plots, report, scenario, servers
from framewire.bench.loadgen import Live, LoadSpec, Mode
from framewire.bench.report import Run
from framewire.bench.scenario import Scenario
from framewire.bench.servers import FRAMEWIRE, TARGETS, Server, ServerConfig, ServerFailed

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"  # results live beside the code, in the checkout
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULTS_DIR = BENCH_DIR / "results"
OUT_DIR = BENCH_DIR / "out"


def _runner() -> asyncio.Runner:
    """The generator's event loop: uvloop when installed, as uvicorn picks for the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class _ProgressObserver:
    """Feeds a rich progress bar from the generator's live counts (refreshed by hand,
    from the generator's loop, so no display thread competes with the measurement)."""

    def __init__(self, progress: Any, task: Any, live: Live, label: str) -> None:
        self.progress, self.task, self.live, self.label = progress, task, live, label

    def window_started(self) -> None:
        self.tick()

    def window_ended(self) -> None:
        self.tick()

    def tick(self) -> None:
        live = self.live
        recent = sorted(live.recent_ms)
        p50 = f"{recent[len(recent) // 2]:.2f} ms" if recent else "-"
        self.progress.update(
            self.task,
            description=f"{self.label} [{live.phase}]",
            completed=live.elapsed_s,
            total=live.total_s or None,
            status=f"{live.connected} conn  sent {live.sent}  recv {live.received}  err {live.errors}  p50 {p50}",
        )
        self.progress.refresh()


class Harness:
    """Runs scenarios: starts (or reuses) servers, drives load, collects :class:`Run`\\s."""

    def __init__(
        self,
        out_dir: Path,
        *,
        repeats: int = 1,
        server_args: Sequence[str] = (),
        startup_timeout_s: float = 60.0,
        url: str | None = None,
        server_pid: int | None = None,
        quiet: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        from rich.console import Console

        if repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {repeats}")
        self.out_dir = out_dir
        self.log_dir = log_dir or out_dir / "logs"
        self.repeats = repeats
        self.server_args = tuple(server_args)
        self.startup_timeout_s = startup_timeout_s
        self.url = url
        self.server_pid = server_pid
        self.console = Console(stderr=True, quiet=quiet, log_path=False)
        # Tables go to stdout, wide enough to stay readable in a log file.
        self.out = Console(quiet=quiet, width=None if self.console.is_terminal else TABLE_WIDTH)
        self._servers: dict[str, Server] = {}
        self._jpegs: dict[tuple[int, int], bytes] = {}
        self.runs: list[Run] = []  # every completed run, kept when a later one fails
        if url is not None:
            loadgen.require_loopback(url)

    # -- servers --------------------------------------------------------------------

    def _server(self, config: ServerConfig) -> Server:
        if config.target == FRAMEWIRE and self.url is not None:
            return self._servers.setdefault(FRAMEWIRE, servers.external(self.url, self.server_pid))
        running = self._servers.get(config.target)
        if running is not None and running.config == config and running.alive():
            return running
        if running is not None:
            running.stop()
        server = servers.start(config, self.log_dir, startup_timeout_s=self.startup_timeout_s)
        self.console.log(f"started {config.target} (pid {server.pid}) at {server.base_url}, log {server.log_path}")
        self._servers[config.target] = server
        return server

    def close(self) -> None:
        servers.stop_all([s for s in self._servers.values() if s.proc is not None])
        self._servers.clear()

    # -- runs -----------------------------------------------------------------------

    def _jpeg(self, size_bytes: int, px: int) -> bytes:
        key = (size_bytes, px)
        if key not in self._jpegs:
            self._jpegs[key] = payload.make_jpeg(size_bytes, px)
        return self._jpegs[key]

    def run_one(
        self,
        sc: Scenario,
        target: str,
        repeat: int,
        run_async: Callable[[Coroutine[Any, Any, loadgen.LoadResult]], loadgen.LoadResult],
        progress: Any,
        task: Any,
    ) -> Run:
        workload = payload.workload_for(sc.app)
        server = self._server(sc.server_config(target, workload.builtin, self.server_args))
        server.check_alive()
        inputs = payload.session_inputs(
            workload, self._jpeg(sc.payload_bytes, sc.image_px), sc.sessions, sc.input_overrides
        )
        spec = LoadSpec(
            url=server.url(workload.ws_path, sc.query()),
            sessions=sc.sessions,
            mode=sc.mode,
            fps=sc.fps,
            inflight=sc.inflight,
            warmup_s=sc.warmup_s,
            window_s=sc.window_s,
            drain_s=sc.drain_s,
        )
        live = Live()
        observer = servers.ServerObserver(server.pid)
        label = f"{sc.name} → {target}" + (f" #{repeat + 1}" if self.repeats > 1 else "")
        watchers: list[loadgen.Observer] = [observer, _ProgressObserver(progress, task, live, label)]
        check = workload.check if target == FRAMEWIRE else None
        if sc.procs > 1:
            run = loadgen.generate_in_processes(
                spec, inputs, sc.procs, check=check, observers=watchers, live=live, seed=repeat
            )
        else:
            makers = [payload.FrameMaker(f) for f in inputs]
            run = loadgen.generate(spec, makers, check=check, observers=watchers, live=live, seed=repeat)
        result = run_async(run)
        server.check_alive()
        return Run(sc, target, repeat, result, observer.results(result.window_s), server.settings())

    def run(self, scenarios: Sequence[Scenario]) -> list[Run]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        plan = run_plan(scenarios, self.repeats)
        runs = self.runs
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            auto_refresh=False,
            disable=not self.console.is_terminal,
        )
        with progress, _runner() as runner:
            overall = progress.add_task("runs", total=len(plan), status=f"0 of {len(plan)}")
            task = progress.add_task("", total=None, status="")
            for sc, target, rep in plan:
                run = self.run_one(sc, target, rep, runner.run, progress, task)
                runs.append(run)
                progress.update(overall, advance=1, status=f"{len(runs)} of {len(plan)}")
                progress.refresh()
                self.console.log(_one_line(run))
        return runs


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_plan(scenarios: Sequence[Scenario], repeats: int) -> list[tuple[Scenario, str, int]]:
    """(scenario, target, repeat) in running order: each scenario's repeats together, the
    targets' order rotated by one per repeat, so no target always runs first."""
    plan = []
    for sc in scenarios:
        for rep in range(repeats):
            k = rep % len(sc.targets)
            plan += [(sc, target, rep) for target in (*sc.targets[k:], *sc.targets[:k])]
    return plan


def _one_line(run: Run) -> str:
    r = run.result
    lat = sorted(r.latencies_ms)
    p50 = f"{lat[len(lat) // 2]:.2f}" if lat else "-"
    p99 = f"{lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.2f}" if lat else "-"
    problems = r.tally.error_count + r.tally.lost + r.tally.bad_outputs + sum(r.session_errors.values())
    return (
        f"{run.scenario.name} → {run.target}: {r.throughput_fps:.0f} frames/s, p50 {p50} ms, p99 {p99} ms, "
        f"dropped {r.tally.dropped}, errors {problems}, generator CPU {100 * r.client_cpu_fraction:.0f}%"
    )


# -- documents --------------------------------------------------------------------------


def build_doc(
    kind: str, argv: Sequence[str], scenarios: Sequence[Scenario], runs: Sequence[Run], stamp: dict[str, Any]
) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario.name, run.target), []).append(run)
    summaries = [report.summarize_runs(group) for group in groups.values()]
    by_key = {(s["scenario"], s["target"]): s for s in summaries}
    return {
        "schema": 1,
        "kind": kind,
        "command": "framewire bench " + shlex.join(argv),
        "stamp": stamp,
        "load_average_at_end": list(os.getloadavg()),
        "generator": {
            "event_loop": _loop_name(),
            "client": "websockets",
            "processes_max": max(sc.procs for sc in scenarios),
        },
        "scenarios": [sc.as_dict() for sc in scenarios],
        "results": summaries,
        "ratios": {sc.name: report.ratios(by_key, sc.name) for sc in scenarios},
    }


#: Width of the tables when the output is not a terminal (a log file, a pipe).
TABLE_WIDTH = 120


def print_tables(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    def show(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(title=title, title_justify="left")
        for name in header:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)

    if doc.get("verdicts"):
        show("Goals", report.VERDICT_HEADER, report.verdict_rows(doc["verdicts"]))
    by_key = {(s["scenario"], s["target"]): s for s in doc["results"]}
    names = list(dict.fromkeys(s["scenario"] for s in doc["results"]))
    ratio_rows = report.ratio_rows(by_key, names)
    if ratio_rows:
        show("FrameWire / baseline (same run)", report.RATIO_HEADER, ratio_rows)
    header, rows = report.result_rows(doc["results"])
    # Two tables, what the client saw and what the server spent, so each fits a terminal.
    cost = header.index("server CPU µs/frame")
    show("Runs", header[:cost], [row[:cost] for row in rows])
    show("Runs: cost", header[:2] + header[cost:], [row[:2] + row[cost:] for row in rows])
    for line in report.error_lines(doc["results"]):
        console.print(line)


def _relative(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


# -- command line -----------------------------------------------------------------------


def _list_of(kind: type) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            return scenario.parse_list(text, kind)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _targets(text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown target(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TARGETS)}"
        )
    return items


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("servers and output")
    g.add_argument("--url", help="drive a FrameWire already running at ws://127.0.0.1:PORT instead of starting one")
    g.add_argument("--server-pid", type=int, help="with --url: the server's pid, to measure its memory and CPU")
    g.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `framewire serve` (repeatable), e.g. --server-arg=--max-frame-bytes=8388608",
    )
    g.add_argument("--startup-timeout-s", type=float, default=60.0, help="wait this long for a server's /ready")
    g.add_argument("--repeats", type=int, default=1, help="run every scenario and target this many times")
    g.add_argument("--out", type=Path, help="folder for results.json, plots and server logs")
    g.add_argument("--no-plots", action="store_true", help="skip the matplotlib plots")
    g.add_argument("--quiet", action="store_true", help="no progress display or tables")


def _add_scenario(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load (comma lists sweep every combination)")
    g.add_argument("--app", type=_list_of(str), default=["framewire/echo"], help="app id(s) to drive")
    g.add_argument("--targets", type=_targets, default=TARGETS, help=f"comma list of {', '.join(TARGETS)}")
    g.add_argument("--sessions", type=_list_of(int), default=[16], help="concurrent sessions")
    g.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.CLOSED, help="open (fixed fps) or closed loop")
    g.add_argument("--fps", type=_list_of(float), default=[15.0], help="frames per second per session (open loop)")
    g.add_argument("--inflight", type=int, default=1, help="frames outstanding per session (closed loop)")
    g.add_argument(
        "--procs", type=int, default=1, help="generator processes sharing the sessions (for more load than one core)"
    )
    g.add_argument("--payload-kb", type=_list_of(float), default=[48.0], help="JPEG frame size, kB (1000 bytes)")
    g.add_argument("--image-px", type=int, default=512, help="JPEG width and height, pixels")
    g.add_argument("--warmup-s", type=float, default=2.0)
    g.add_argument("--window-s", type=float, default=10.0, help="measured window per run")
    g.add_argument("--drain-s", type=float, default=3.0, help="longest wait for answers after the window")
    g.add_argument("--max-buffering", type=int, help="the sessions' max_buffering query parameter")
    g.add_argument("--max-batch-size", type=_list_of(int), help="server batch size cap(s) (FrameWire)")
    g.add_argument("--max-queue-delay-ms", type=_list_of(float), help="server batching delay(s) (FrameWire)")
    g.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an input field (JSON value), e.g. --input num_inference_steps=4",
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="framewire bench", description=(__doc__ or "").split("\n\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run one scenario or a sweep against every target")
    _add_scenario(p_run)
    _add_common(p_run)
    p_run.add_argument("--results-md", type=Path, help="also splice the tables into this Markdown file")
    p_goals = sub.add_parser("goals", help="measure the goals (and a sessions sweep); rewrite RESULTS.md")
    _add_common(p_goals)
    p_goals.add_argument(
        "--quick", action="store_true", help="short windows; results go to benchmarks/out, not RESULTS.md"
    )
    p_goals.add_argument("--skip-sweep", action="store_true", help="only the goal scenarios")
    p_goals.add_argument("--results-md", type=Path, help="Markdown file to update (default: benchmarks/RESULTS.md)")
    p_goals.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    p_plot = sub.add_parser("plot", help="redraw the plots (and optionally the Markdown) of a results.json")
    p_plot.add_argument("results", type=Path)
    p_plot.add_argument("--out", type=Path, help="folder for the PNGs (default: beside the JSON)")
    p_plot.add_argument("--results-md", type=Path, help="also rewrite the generated block of this Markdown file")
    sub.add_parser("video", help="WebRTC video sessions beside the WebSocket path on one server", add_help=False)
    sub.add_parser(
        "scheduler",
        help="latency targets and degradation under 3x overload, skipping on a mostly idle canvas (fake engine)",
        add_help=False,
    )
    return root


def scenarios_from(args: argparse.Namespace) -> list[Scenario]:
    overrides = dict(payload.parse_override(text) for text in args.input)
    base = Scenario(
        app=args.app[0],
        mode=args.mode,
        inflight=args.inflight,
        procs=args.procs,
        image_px=args.image_px,
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        drain_s=args.drain_s,
        max_buffering=args.max_buffering,
        targets=args.targets,
    )
    base = scenario.with_inputs(base, overrides)
    axes: dict[str, list[Any]] = {
        "app": args.app,
        "sessions": args.sessions,
        "payload_bytes": [round(kb * 1000) for kb in args.payload_kb],
    }
    if args.mode is Mode.OPEN:
        axes["fps"] = args.fps
    if args.max_batch_size:
        axes["max_batch_size"] = args.max_batch_size
    if args.max_queue_delay_ms:
        axes["max_queue_delay_ms"] = args.max_queue_delay_ms
    return scenario.expand(base, axes)


@contextmanager
def _harness(args: argparse.Namespace, out_dir: Path, log_dir: Path | None = None) -> Iterator[Harness]:
    harness = Harness(
        out_dir,
        log_dir=log_dir,
        repeats=args.repeats,
        server_args=args.server_arg,
        startup_timeout_s=args.startup_timeout_s,
        url=args.url,
        server_pid=args.server_pid,
        quiet=args.quiet,
    )
    try:
        yield harness
    finally:
        harness.close()


def _finish(doc: dict[str, Any], out_dir: Path, args: argparse.Namespace, console: Any) -> list[Path]:
    made = [] if args.no_plots else plots.plot_all(doc, out_dir)
    doc["plots"] = [p.name for p in made]
    report.write_json(out_dir / "results.json", doc)
    print_tables(doc, console)
    console.print(
        f"results: {out_dir / 'results.json'}" + (f"; plots: {', '.join(p.name for p in made)}" if made else "")
    )
    return made


def _run_or_save(
    harness: Harness, scenarios: Sequence[Scenario], argv: Sequence[str], env: dict[str, Any]
) -> list[Run]:
    """Run ``scenarios``; when one fails, save the runs completed so far, then re-raise."""
    try:
        return harness.run(scenarios)
    except (ServerFailed, TimeoutError):
        if harness.runs:
            done = list(dict.fromkeys(r.scenario for r in harness.runs))
            doc = build_doc("partial", argv, done, harness.runs, env)
            report.write_json(harness.out_dir / "results.partial.json", doc)
            harness.console.print(
                f"saved the {len(harness.runs)} completed runs to {harness.out_dir / 'results.partial.json'}"
            )
        raise


def _cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from framewire.bench.environment import stamp

    scenarios = scenarios_from(args)
    out_dir = args.out or OUT_DIR / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with _harness(args, out_dir) as harness:
        env = stamp()
        runs = _run_or_save(harness, scenarios, argv, env)
        doc = build_doc("run", argv, scenarios, runs, env)
        made = _finish(doc, out_dir, args, harness.out)
    if args.results_md:
        md = args.results_md.resolve()
        block = report.render_block(doc, [_relative(p, md.parent) for p in made], doc["command"])
        report.update_results_md(md, block)
    return 0


def _cmd_goals(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from framewire.bench.environment import stamp

    scenarios = scenario.goal_scenarios(args.quick)
    if not args.skip_sweep:
        scenarios += scenario.sessions_sweep(args.quick)
    default_out = (
        OUT_DIR / ("quick-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")) if args.quick else RESULTS_DIR
    )
    out_dir = args.out or default_out
    # Server logs go under --out; without it they stay out of the committed results folder.
    log_dir = (
        args.out / "logs"
        if args.out
        else OUT_DIR / ("goals-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")) / "logs"
    )
    with _harness(args, out_dir, log_dir) as harness:
        env = stamp()
        runs = _run_or_save(harness, scenarios, argv, env)
        doc = build_doc("goals", argv, scenarios, runs, env)
        doc["quick"] = args.quick
        by_key = {(s["scenario"], s["target"]): s for s in doc["results"]}
        verdicts = scenario.evaluate(by_key)
        doc["verdicts"] = report.verdict_dicts(verdicts)
        made = _finish(doc, out_dir, args, harness.out)
    md = args.results_md or (None if args.quick else RESULTS_MD)
    if md is not None:
        md = md.resolve()
        report.update_results_md(md, report.render_block(doc, [_relative(p, md.parent) for p in made], doc["command"]))
        harness.console.print(f"updated {md}")
    if args.strict and any(v.passed is False for v in verdicts):
        return 3
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import json

    doc = json.loads(args.results.read_text())
    made = plots.plot_all(doc, args.out or args.results.parent)
    print("\n".join(str(p) for p in made) or "nothing to plot")
    if args.results_md:
        md = args.results_md.resolve()
        report.update_results_md(md, report.render_block(doc, [_relative(p, md.parent) for p in made], doc["command"]))
        print(f"updated {md}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["workers"]:  # engine workers against in-process and the baseline (own flags)
        from framewire.bench import workers_bench

        return workers_bench.main(argv[1:])
    if argv[:1] == ["link"]:  # the edge-worker link's transport: raw TCP against WebSocket (own flags)
        from framewire.bench import link_bench

        return link_bench.main(argv[1:])
    if argv[:1] == ["video"]:  # WebRTC video sessions beside the WebSocket path (own flags)
        from framewire.bench import video_bench

        return video_bench.main(argv[1:])
    if argv[:1] == ["scheduler"]:
        from framewire.bench import scheduler_bench

        return scheduler_bench.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args, argv)
        if args.command == "goals":
            return _cmd_goals(args, argv)
        return _cmd_plot(args)
    except (ServerFailed, TimeoutError, ValueError, OSError) as exc:
        print(f"framewire bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("framewire bench: interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
