"""Error bodies in each dialect the coordinator speaks."""

from __future__ import annotations

from pydantic import BaseModel


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's SDKs parse it."""

    error: OpenAIErrorDetail
