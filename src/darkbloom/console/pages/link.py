"""Link device (console.md): the person signed in enters the code `darkbloom login` shows, and
the machine earns for this account from then on (docs/device-login.md).

Signed out, the page sends the person to sign in and back here with ``?code=`` kept in ``next``,
so a code carried in the URL survives signing in. The approval itself is the page script's
POST /v1/device/approve with the session and CSRF header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in, to_sign_in
from darkbloom.coordinator.api.device import MAX_USER_CODE_CHARS

router = APIRouter()


def prefill(code: str | None) -> str:
    """A code from the URL, if it could be one (printable, short); else nothing."""
    if code is None:
        return ""
    code = code.strip()
    return code.upper() if 0 < len(code) <= MAX_USER_CODE_CHARS and code.isprintable() else ""


@router.get("/link")
async def link_page(request: Request, code: str | None = None) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    return page(request, "link.html", identity, "Link device", code=prefill(code),
                max_code=MAX_USER_CODE_CHARS)
