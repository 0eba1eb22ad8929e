"""Reading the services' one Dockerfile and the build context's .dockerignore, as Docker would.

One file builds every service's image: ``--build-arg SERVICE=<name> --target <name>``. A service's
view of it (``image_steps``) is the stages its target is built from, with the argument's value in
place of ``${SERVICE}``, as Docker substitutes it.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tests.deploy.manifests import ROOT


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its continuation lines joined."""

    keyword: str
    arguments: str
    stage: str
    """The name of the stage it belongs to (``FROM ... AS <name>``)."""


DOCKERFILE = ROOT / "Dockerfile"
"""The one Dockerfile of every service's image, at the root of the build context."""


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, without comments and blank lines."""
    found: list[Instruction] = []
    stage = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = arguments.split()[-1] if " AS " in arguments.upper() else arguments.strip()
        found.append(Instruction(keyword, arguments.strip(), stage))
    return found


def image_steps(service: str, path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions that build ``service``'s image: its target stage and the stages it comes from.

    ``${SERVICE}`` (the build argument) is replaced by ``service``, in every instruction.
    """
    steps = [
        Instruction(step.keyword, step.arguments.replace("${SERVICE}", service), step.stage)
        for step in instructions(path)
    ]
    stages = {step.stage for step in steps}
    needed: set[str] = set()
    pending = [service]
    while pending:
        stage = pending.pop()
        if stage in needed:
            continue
        needed.add(stage)
        for step in steps:
            if step.stage != stage:
                continue
            if step.keyword == "FROM" and (parent := step.arguments.split()[0]) in stages:
                pending.append(parent)
            if step.keyword == "COPY":
                pending += [
                    word.removeprefix("--from=") for word in step.arguments.split() if word.startswith("--from=")
                ]
    assert service in stages, f"the Dockerfile has no stage {service!r}"
    # The global arguments (before the first FROM) belong to every image.
    return [step for step in steps if step.stage in needed or not step.stage]


def environment(service: str, stage: str) -> dict[str, str]:
    """The ``ENV`` values a stage of ``service``'s image sets (``KEY=value`` form)."""
    values: dict[str, str] = {}
    for instruction in image_steps(service):
        if instruction.stage == stage and instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def run_commands(service: str, stage: str) -> list[str]:
    """The shell commands of a stage's ``RUN`` instructions for ``service``, without their ``--mount`` options."""
    commands = []
    for instruction in image_steps(service):
        if instruction.stage == stage and instruction.keyword == "RUN":
            commands.append(re.sub(r"--mount=\S+\s*", "", instruction.arguments).strip())
    return commands


def copies_from_context(service: str, stage: str) -> list[tuple[list[str], str]]:
    """The ``COPY`` instructions of a stage of ``service``'s image that read the context: (sources, destination)."""
    found = []
    for instruction in image_steps(service):
        if instruction.stage == stage and instruction.keyword == "COPY":
            words = shlex.split(instruction.arguments)
            if any(word.startswith("--from") for word in words):
                continue
            words = [word for word in words if not word.startswith("--")]
            found.append((words[:-1], words[-1]))
    return found


class DockerIgnore:
    """The build context's ``.dockerignore``: the last matching pattern wins, ``!`` includes again.

    A path is also excluded when one of its parent directories is (Docker's own rule).
    """

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[re.Pattern[str], bool]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            self.patterns.append((self._compile(line.removeprefix("!").strip("/")), include))

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        out = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                out += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                out += ".*"
                index += 2
            elif pattern[index] == "*":
                out += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                out += "[^/]"
                index += 1
            else:
                out += re.escape(pattern[index])
                index += 1
        return re.compile(out)

    def sends(self, relative: str) -> bool:
        """Whether the file at ``relative`` (to the context's root) is part of the build context."""
        path = PurePosixPath(relative)
        candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
        included = True
        for pattern, include in self.patterns:
            if any(pattern.fullmatch(candidate) for candidate in candidates):
                included = include
        return included


def context_ignore() -> DockerIgnore:
    """The workspace root's ``.dockerignore``."""
    return DockerIgnore((ROOT / ".dockerignore").read_text())


def copy_build_context(service: str, stage: str, workdir: Path) -> None:
    """Lay out in ``workdir`` what the stage's ``COPY`` instructions put in its WORKDIR."""
    ignore = context_ignore()
    for sources, destination in copies_from_context(service, stage):
        for source in sources:
            origin = ROOT / source
            files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if not ignore.sends(relative):
                    continue
                if origin.is_file():
                    target = (
                        workdir / destination / file.name if destination.endswith(("/", ".")) else workdir / destination
                    )
                else:
                    target = workdir / destination / file.relative_to(origin)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, target)
