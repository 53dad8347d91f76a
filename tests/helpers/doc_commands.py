"""The shell commands the README and docs/*.md show a reader, as the reader would type them.

The rule:

- **Fenced blocks** tagged ``bash``, ``sh``, ``shell`` or ``console``: every line is a
  command. Untagged blocks: only lines whose first word is a command word (below); folder
  trees and diagrams are not. Other tags (``yaml``, ``json``, ``make``, ...) hold no commands.
- **Table cells** (lines starting with ``|``): every backticked span whose first word is a
  command word and that has at least two words and no ``...`` (a bare `torchrun` names a
  tool; `torchrun ... -m kedro run` is a schematic). Backticked spans in running prose are
  names, not commands, and are left out.
- A **command word** is the first word after any ``VAR=value`` assignments: one of
  COMMAND_WORDS, or a path into the venv (``.venv/bin/...``).
- In a block, a line ending in ``\\`` continues on the next line (joined with a space,
  whitespace runs collapsed), and so does a line with an open quote (``python -c "`` ...
  ``"``; joined with its newlines kept); the joined lines are one command. A ``# comment``
  outside quotes is removed, and so is a ``$ `` prompt in ``console`` blocks.

Each command is returned with the file and line it starts on (first occurrence wins).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND_WORDS = frozenset({
    "make", "kedro", "python", "python3", "pip", "torchrun", "mlflow", "curl", "source",
    "export", "bash", "sh", "printf", "mkdir", "cp", "jupyter", "git", "docker", "uvicorn",
})
SHELL_TAGS = frozenset({"bash", "sh", "shell", "console"})
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
INLINE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class DocCommand:
    command: str
    source: str  # "docs/scale.md:37"


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def first_word(command: str) -> str:
    """The program a command runs: its first word after ``VAR=value`` assignments."""
    for word in command.split():
        if not ASSIGNMENT.match(word):
            return word
    return ""


def is_command(text: str) -> bool:
    word = first_word(text)
    return word in COMMAND_WORDS or word.startswith(".venv/bin/")


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _quotes_open(text: str) -> bool:
    try:
        shlex.split(text.removesuffix("\\"))
    except ValueError:
        return True
    return False


def _block_commands(lines: list[str], tag: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending, start, multiline = "", 0, False
    for k, raw in enumerate(lines):
        line = raw
        if tag == "console" and not pending:
            if not line.startswith("$ "):
                continue  # output
            line = line[2:]
        if not pending:
            start = k
            line = _strip_comment(line)
        if pending and not _quotes_open(pending):
            line = _strip_comment(line)  # a continued line: its comment goes too
        text = (f"{pending}\n{line}" if _quotes_open(pending) else f"{pending} {line}"
                ) if pending else line
        if _quotes_open(text):
            pending, multiline = text, True
            continue
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        pending = ""
        command = text.strip() if multiline else " ".join(text.split())
        multiline = False
        if command and (tag in SHELL_TAGS or is_command(command)):
            out.append((start, command))
    return out


def extract(path: Path, root: Path = ROOT) -> list[DocCommand]:
    """The commands shown in one Markdown file, in order."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text().splitlines()
    found: list[DocCommand] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            tag = fence.group(2).lower()
            end = i + 1
            while end < len(lines) and not FENCE.match(lines[end]):
                end += 1
            if tag in SHELL_TAGS or tag == "":
                for k, command in _block_commands(lines[i + 1:end], tag):
                    found.append(DocCommand(command, f"{rel}:{i + 2 + k}"))
            i = end + 1
            continue
        if lines[i].lstrip().startswith("|"):
            for span in INLINE.findall(lines[i]):
                if is_command(span) and len(span.split()) > 1 and "..." not in span:
                    found.append(DocCommand(" ".join(span.split()), f"{rel}:{i + 1}"))
        i += 1
    return found


def all_commands(root: Path = ROOT) -> dict[str, DocCommand]:
    """Every command of README.md and docs/*.md, by its text (first occurrence kept)."""
    out: dict[str, DocCommand] = {}
    for path in doc_files(root):
        for cmd in extract(path, root):
            out.setdefault(cmd.command, cmd)
    return out
