"""The documentation: the site builds with no dead link or anchor, the CLI reference is the parsers', and
every command line, option and file a page shows exists today."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from . import background
from .test_cli import REPO

DOCS = REPO / "docs"
PAGES = sorted([REPO / "README.md", *DOCS.rglob("*.md")])


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks, pictures = _load("hooks"), _load("pictures")


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=REPO, timeout=1200,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def build_site() -> Path:
    """The site as `mkdocs build --strict` writes it (the pictures drawn, or taken from their cache); made
    in the background from the session's start (tests/background.py)."""
    site = Path(tempfile.mkdtemp(prefix="edge-export-site-"))
    result = mkdocs_build(REPO / "mkdocs.yml", site)
    if result.returncode != 0:
        shutil.rmtree(site, ignore_errors=True)
        pytest.fail(f"mkdocs build --strict failed:\n{result.stdout[-3000:]}{result.stderr[-5000:]}")
    return site


@pytest.fixture(scope="module")
def site():
    site = background.result("site", build_site)
    yield site
    shutil.rmtree(site, ignore_errors=True)


def test_the_site_builds_with_every_page_and_picture(site):
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS)
        built = site / ("index.html" if relative.name == "index.md" and relative.parent == Path(".")
                        else relative.parent / ("" if relative.stem == "index" else relative.stem) / "index.html")
        assert built.is_file(), f"{relative} has no page in the site"
    for name in pictures.PICTURES:
        with (site / "generated" / name).open("rb") as picture:
            assert picture.read(8) == b"\x89PNG\r\n\x1a\n", name


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {program: hooks.parser_of(program) for program in hooks.PROGRAMS}


def every_option(found: dict[str, argparse.ArgumentParser]) -> dict[str, set[str]]:
    """Per program, every long option any of its commands takes."""
    return {program: {o for _, (_, sub) in hooks.commands(parser).items() for a in hooks.options(sub)
                      for o in a.option_strings if o.startswith("--")} for program, parser in found.items()}


def test_the_cli_reference_holds_every_command_and_option_of_every_parser(site):
    reference = (site / "reference" / "cli" / "index.html").read_text()
    for program, parser in parsers().items():
        for name, (_, sub) in hooks.commands(parser).items():
            assert f"{program} {name}" in reference
            for action in hooks.options(sub):
                for option in action.option_strings:
                    assert f"<code>{option}</code>" in reference, f"{program} {name} {option} is not in the reference"


COMMAND = re.compile(r"^(?:\.venv/bin/)?python3? -m (export|runtime|models) (.*)$")


def command_lines(text: str, fences: tuple[str, ...]) -> list[tuple[str, str]]:
    """(program, arguments) of each `python -m PROGRAM ...` line in the fenced blocks of the given kinds,
    continuation lines joined and comments dropped."""
    found = []
    for kind, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if kind not in fences:
            continue
        lines: list[str] = []
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            if line[:1].isspace() and lines and kind != "bash":
                lines[-1] += " " + line.strip()  # a synopsis's continuation line
            else:
                lines.append(line.strip())
        found += [(m.group(1), m.group(2)) for m in map(COMMAND.match, lines) if m]
    return found


def unparsed(found: dict[str, argparse.ArgumentParser], pages: list[Path]) -> list[str]:
    """The runnable command lines (```bash blocks) that today's parsers refuse, with the page and the reason."""
    problems = []
    for page in pages:
        for program, arguments in command_lines(page.read_text(), ("bash",)):
            try:
                found[program].parse_args(shlex.split(arguments))
            except SystemExit:
                problems.append(f"{page.relative_to(REPO)}: python -m {program} {arguments}")
    return problems


def undocumented(found: dict[str, argparse.ArgumentParser], pages: list[Path]) -> list[str]:
    """Options a page names in a synopsis or a command line that no command of that program takes."""
    known = every_option(found)
    problems = []
    for page in pages:
        for program, arguments in command_lines(page.read_text(), ("", "bash", "text")):
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", arguments):
                if option not in known[program]:
                    problems.append(f"{page.relative_to(REPO)}: python -m {program} ... {option}")
    return problems


def test_every_command_line_a_page_shows_parses_today(capsys):
    found = parsers()
    assert sum(len(command_lines(p.read_text(), ("bash",))) for p in PAGES) >= 15  # the check has lines to read
    assert unparsed(found, PAGES) == []
    assert undocumented(found, PAGES) == []


def test_a_flag_removed_from_a_parser_is_caught_in_the_pages_that_show_it(capsys):
    """`--memory-budget` taken out of `export build` and `runtime bench`: the pages that show it fail."""
    found = parsers()
    for program, command in (("export", "build"), ("runtime", "bench")):
        sub = hooks.commands(found[program])[command][1]
        action = sub._option_string_actions["--memory-budget"]
        sub._remove_action(action)
        for option in action.option_strings:
            del sub._option_string_actions[option]
    problems = undocumented(found, PAGES) + unparsed(found, PAGES)
    assert any("--memory-budget" in p for p in problems), problems
    assert all("--memory-budget" in p for p in problems), problems


BUILT_FILES = {"report.md", "manifest.json", "deploy.yml", "DIR/deploy.yml", "rollback.yml",
               "edge-export.yml"}  # written by the commands the pages show
USERS_FILES = {"my_unet.py", "FILE.py", "nope.py", "net.py", "make.py", "hosts.yml"}  # the user's own, in the examples


def test_every_file_a_page_names_exists():
    """A path a page names exists from the root or beside the page; a bare file name, somewhere in the repository."""
    files = {p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    names = {f.rsplit("/", 1)[-1] for f in files}
    missing = []
    for page in PAGES:
        named = set(re.findall(r"(?<![\w./-])([\w./-]+\.(?:md|py|toml|txt|yml))\b", page.read_text()))
        for name in named - BUILT_FILES - USERS_FILES:
            beside = (page.parent / name).resolve()
            if name not in files and not beside.exists() and ("/" in name or name not in names):
                missing.append(f"{page.relative_to(REPO)}: {name}")
    assert not missing, missing
    assert "Save\nthis as `my_unet.py`:" in (REPO / "README.md").read_text()  # the example a newcomer pastes is whole


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("link, complaint", [
    ("[the gone page](gone.md)", "gone.md"),
    ("[a gone section](build.md#no-such-section)", "no-such-section"),
])
def test_a_dead_link_or_anchor_fails_the_site_build(tmp_path, site, link, complaint):
    """The same configuration on a copy of the pages, one of them given a dead link: strict mode refuses it."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("generated"))
    (docs / "index.md").write_text((docs / "index.md").read_text() + f"\nSee {link}.\n")
    config = (REPO / "mkdocs.yml").read_text().replace("docs/hooks.py", str(DOCS / "hooks.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and complaint in result.stdout + result.stderr, result.stdout + result.stderr
