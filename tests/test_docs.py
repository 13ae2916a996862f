"""Every command block in README.md and docs/*.md runs, the way a reader would run it.

A fenced block in ``bash``/``sh``/``shell`` runs in bash (``set -euo pipefail``), a
``python`` block in the venv's interpreter, each from the repository root with its own
temporary home and data dir (``HOME``, ``FRAMEWIRE_DATA_DIR``, ``XDG_DATA_HOME``), the
Hub offline and the venv's ``bin`` first on ``PATH``. Blocks in other languages (JSON
configs, nginx, Caddyfile, sample output) are not commands. A block may be skipped only
with ``<!-- not-run: <reason> -->`` on the line before it (a GPU, the network, Docker);
the reason is printed with the skip.

Servers: a line that starts ``framewire serve`` (or ``make serve``) is started in the
background, bounded in time, and the rest of the block runs once it answers ``/ready``;
it is stopped (its whole process group) when the block ends. Port 8000 in a block becomes
a free port (``FRAMEWIRE_PORT`` too), as does 8001 (the queue port in examples); a block that talks to
``:8000`` without starting a server gets one (``framewire serve``, echo app). To keep the
suite fast the environment serves only the echo app unless a command names its apps
(``FRAMEWIRE_BUILTIN_APPS=echo``) and diffusion apps on tiny random weights
(``FRAMEWIRE_WEIGHTS=random``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell")
COMMANDS = (*SHELL, "python")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.+?)\s*-->$")
FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")
#: A line that starts a server the block then talks to.
SERVER_LINE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?(?:framewire serve|make serve)\b")
BLOCK_TIMEOUT_S = 180  # generous: a loaded 2-core machine
READY_TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the not-run reason above each (if any)."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(2).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        above = lines[start - 1].strip() if start else ""
        reason = NOT_RUN.match(above)
        found.append(Block(path, start + 1, language, "\n".join(lines[start + 1 : j]), reason and reason.group(1)))
        i = j + 1
    return found


ALL = [b for path in DOCS for b in blocks(path)]
RUNNABLE = [b for b in ALL if b.language in COMMANDS]


def test_every_block_says_its_language() -> None:
    """A block without a language would be neither run nor knowingly skipped."""
    unnamed = [b.id for b in ALL if not b.language]
    assert not unnamed, f"fenced blocks without a language (use text for sample output): {unnamed}"


def test_not_run_marks_sit_only_above_command_blocks() -> None:
    stray = [b.id for b in ALL if b.not_run and b.language not in COMMANDS]
    assert not stray, f"not-run marks above blocks that are not commands: {stray}"


def _ports(text: str, port: int, queue_port: int) -> str:
    return re.sub(r"(?<=[:\s])8001\b", str(queue_port), re.sub(r"(?<=[:\s])8000\b", str(port), text))


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined (a heredoc's body is kept as it is)."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _bash_script(text: str, port: int) -> str:
    """The block as a script: server lines run in their own process group, awaited, and
    stopped on exit; everything else as written."""
    script = [
        "set -euo pipefail",
        "servers=()",
        'cleanup() { for pid in "${servers[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done;'
        ' for pid in "${servers[@]}"; do for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1;'
        ' done; kill -KILL -- "-$pid" 2>/dev/null || true; done; }',
        "trap cleanup EXIT",
        "wait_ready() {"
        f" for _ in $(seq {READY_TIMEOUT_S * 5}); do"
        ' if framewire health --ready --timeout-s 1 --url "$1" 2>/dev/null; then return 0; fi;'
        ' kill -0 "$2" 2>/dev/null || { echo "the server exited:"; cat "$3"; return 1; }; sleep 0.2; done;'
        ' echo "the server was not ready in time:"; cat "$3"; return 1; }',
    ]
    heredoc_end: str | None = None
    for n, line in enumerate(_logical_lines(text)):
        if heredoc_end is not None:
            script.append(line)
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        here = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if here:
            heredoc_end = here.group(1)
        stripped = line.strip()
        if SERVER_LINE.match(stripped):
            command = re.sub(r"\s*&\s*(#.*)?$", "", stripped.split(" # ")[0])
            command = re.sub(r"^make serve\b", "framewire serve", command)
            scheme = "https" if "--tls-self-signed" in command or "--ssl-certfile" in command else "http"
            log = f"$TMPDIR_BLOCK/server{n}.log"
            script.append(f"setsid bash -c {shlex.quote('exec ' + command)} >{log} 2>&1 & servers+=($!)")
            script.append(f'wait_ready {scheme}://127.0.0.1:{port} "${{servers[-1]}}" {log}')
            script.append(f"head -c 4000 {log}")
        else:
            script.append(line)
    return "\n".join(script) + "\n"


def _environment(tmp: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAMEWIRE_", "FAL_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp / "home"),
        FRAMEWIRE_DATA_DIR=str(tmp / "data"),
        FRAMEWIRE_PORT=str(port),
        XDG_DATA_HOME=str(tmp / "xdg"),
        FRAMEWIRE_BUILTIN_APPS="echo",
        FRAMEWIRE_WEIGHTS="random",
        FRAMEWIRE_LOG_LEVEL="warning",
        HF_HUB_OFFLINE="1",
        TMPDIR_BLOCK=str(tmp),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_command_block_runs(block: Block) -> None:
    if block.not_run:
        print(f"{block.id}: not run: {block.not_run}")
        pytest.skip(f"not run: {block.not_run}")
    port, queue_port = free_port(), free_port()
    text = _ports(block.text, port, queue_port)
    with tempfile.TemporaryDirectory(prefix="framewire-docs-") as folder:
        tmp = Path(folder)
        env = _environment(tmp, port)
        starts_server = any(SERVER_LINE.match(line.strip()) for line in _logical_lines(text))
        if block.language == "python":
            script_path = tmp / "block.py"
            script_path.write_text(text)
            body = f"{shlex.quote(sys.executable)} {shlex.quote(str(script_path))}\n"
        else:
            body = text
        if str(port) in text and not starts_server:
            body = "framewire serve --builtin-apps echo\n" + body  # the server the block expects
        script = _bash_script(body, port)
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    assert done.returncode == 0, (
        f"{block.id} failed ({done.returncode}):\n{text}\n--- output\n{done.stdout}\n{done.stderr}"
    )


#: Pages other work adds to docs/; the README links them already.
PENDING_PAGES = {"docs/redis.md", "docs/openapi.md", "docs/video.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's ids of a page's headings."""
    ids = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^#{1,6} (.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            ids.add(text.replace(" ", "-"))
    return ids


def test_links_between_pages_lead_somewhere() -> None:
    broken = []
    for page in DOCS:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s), mailto
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            shown = str(dest.relative_to(ROOT)) if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists():
                if shown not in PENDING_PAGES:
                    broken.append(f"{page.relative_to(ROOT)}: {target}")
                continue
            if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken
