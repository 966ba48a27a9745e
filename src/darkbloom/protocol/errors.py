"""Error bodies in each dialect the coordinator speaks."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    # Ours, consumer-blind mode only: {"request_id", "ciphertext"} of the provider's sealed words.
    sealed: dict[str, str] | None = Field(default=None, exclude_if=lambda v: v is None)


class OpenAIError(BaseModel):
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's SDKs parse it."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str
    sealed: dict[str, str] | None = Field(default=None, exclude_if=lambda v: v is None)


class AnthropicError(BaseModel):
    """``{"type": "error", "error": {"type", "message"}}`` as Anthropic's SDKs parse it."""

    type: str = "error"
    error: AnthropicErrorDetail
