"""API errors as kube-apiserver words them: every failure is a ``Status`` with reason and code.

Handlers raise ``StatusError``; the app turns it (and any unexpected exception, as a 500)
into the JSON body. Messages follow upstream exactly where kubectl prints them, e.g.
``deployments.apps "web" not found`` or ``The Deployment "x" is invalid: spec.selector:
Required value``.
"""

from __future__ import annotations

from typing import Any

from knetlab.errors import KnetlabError

from .resources import Resource


class StatusError(KnetlabError):
    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "message": self.message,
                               "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def status_success(details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                           "status": "Success"}
    if details:
        out["details"] = details
    return out


def _details(res: Resource | None, name: str, kind: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {"name": name}
    if res is not None:
        if res.group:
            d["group"] = res.group
        d["kind"] = kind or res.plural
    return d


def not_found(res: Resource, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{res.qualified} "{name}" not found',
                       _details(res, name))


def namespace_not_found(name: str) -> StatusError:
    return StatusError(404, "NotFound", f'namespaces "{name}" not found',
                       {"name": name, "kind": "namespaces"})


def already_exists(res: Resource, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists',
                       _details(res, name))


def conflict(res: Resource, name: str, why: str = "") -> StatusError:
    why = why or ("the object has been modified; please apply your changes to the latest "
                  "version and try again")
    return StatusError(409, "Conflict",
                       f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                       _details(res, name))


def invalid(res: Resource, name: str, causes: list[tuple[str, str, str]]) -> StatusError:
    """``causes``: (field, reason type, message) as upstream's field.Error, e.g.
    ("spec.selector", "FieldValueRequired", "Required value")."""
    text = ", ".join(f"{f}: {m}" for f, _, m in causes)
    if len(causes) > 1:
        text = "[" + text + "]"
    details = _details(res, name, res.kind)
    details["causes"] = [{"reason": t, "message": m, "field": f} for f, t, m in causes]
    return StatusError(422, "Invalid", f'{_kind_q(res)} "{name}" is invalid: {text}', details)


def _kind_q(res: Resource) -> str:
    # upstream: NewInvalid(qualifiedKind, ...) prints "Deployment.apps" for grouped kinds
    return f"{res.kind}.{res.group}" if res.group else res.kind


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the "
                       "requested resource") -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def forbidden(message: str) -> StatusError:
    return StatusError(403, "Forbidden", message)


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def too_large() -> StatusError:
    return StatusError(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")


def unsupported_media(ctype: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType",
                       f'the body of the request was in an unknown format - accepted media '
                       f'types include: application/json-patch+json, application/merge-patch+json, '
                       f'application/strategic-merge-patch+json (got "{ctype}")')


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")
