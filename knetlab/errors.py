"""The error types of knetlab: library code raises these, only the CLI maps them to exit codes."""

from __future__ import annotations


class KnetlabError(Exception):
    """Base of every error knetlab raises on purpose."""


class ConfigError(KnetlabError):
    """A topology or manifest is wrong; the message names file, line, field and fix."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.message, self.file, self.line, self.field, self.fix = message, file, line, field, fix
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        text = f"{where}{field + ': ' if field else ''}{message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)

    def at(self, file: str) -> ConfigError:
        """The same error, naming the file it came from."""
        return ConfigError(self.message, file=file, line=self.line, field=self.field, fix=self.fix)


class CommandError(KnetlabError):
    """A program knetlab ran failed; carries argv, exit code and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, context: str = "") -> None:
        self.argv, self.returncode, self.stderr = argv, returncode, stderr.strip()
        what = context or " ".join(argv)
        super().__init__(f"{what}: exit {returncode}: {self.stderr or '(no stderr)'}")


class NotFoundError(KnetlabError):
    """A named cluster, node, pod or object does not exist."""


class UnsupportedError(KnetlabError):
    """This kernel or machine lacks a feature the topology asks for."""
