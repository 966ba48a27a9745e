"""API keys page (console.md): the account's keys (prefixes only: a secret is shown once, by the
script that created it, and never again), create and revoke, and quick-start snippets with this
coordinator's base URL filled in."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response

from darkbloom.console.render import page, signed_in, to_sign_in
from darkbloom.coordinator.api.accounts import MAX_LABEL_CHARS
from darkbloom.coordinator.store.credentials import list_api_keys

router = APIRouter()
# The table shows at most this many keys (the oldest first); an account with more still revokes
# the rest through the API.
MAX_SHOWN_KEYS = 500


def when(stamp: datetime | None) -> str:
    """A stored UTC time as the page writes it: to the minute, in UTC."""
    return stamp.strftime("%Y-%m-%d %H:%M UTC") if stamp else "never"


def snippet_model(request: Request) -> str:
    """A model to put in the snippets: the first one served now, else the catalog's first."""
    state = request.app.state
    online = state.scheduler.model_summaries()
    models = [m for m in state.catalog.models if m.is_text]  # the snippets are chat calls
    for model in models:
        if model.id in online:
            return str(model.id)
    return str(models[0].id) if models else "MODEL"


def snippets(base_url: str, model: str) -> list[tuple[str, str, str]]:
    """(id, heading, code) for each quick start: the key comes from the environment, so no page
    ever holds it and a copied snippet holds no secret."""
    curl = (f"curl {base_url}/v1/chat/completions \\\n"
            '  -H "Authorization: Bearer $DARKBLOOM_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"""  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'""")
    python_openai = f"""import os
from openai import OpenAI

client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["DARKBLOOM_API_KEY"])
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "Hello"}}],
)
print(reply.choices[0].message.content)"""
    python_anthropic = f"""import os
from anthropic import Anthropic

client = Anthropic(base_url="{base_url}", api_key=os.environ["DARKBLOOM_API_KEY"])
message = client.messages.create(
    model="{model}",
    max_tokens=512,
    messages=[{{"role": "user", "content": "Hello"}}],
)
print(message.content[0].text)"""
    typescript = f"""import OpenAI from "openai";

const client = new OpenAI({{
  baseURL: "{base_url}/v1",
  apiKey: process.env.DARKBLOOM_API_KEY,
}});
const reply = await client.chat.completions.create({{
  model: "{model}",
  messages: [{{ role: "user", content: "Hello" }}],
}});
console.log(reply.choices[0].message.content);"""
    return [("curl", "curl", curl), ("python-openai", "Python (openai)", python_openai),
            ("python-anthropic", "Python (anthropic)", python_anthropic),
            ("typescript-openai", "TypeScript (openai)", typescript)]


@router.get("/keys")
async def keys_page(request: Request) -> Response:
    identity = await signed_in(request)
    if identity is None:
        return to_sign_in(request)
    keys = await list_api_keys(request.app.state.sessions, identity.account_id)
    return page(request, "keys.html", identity, "API keys", keys=keys[:MAX_SHOWN_KEYS],
                more_keys=max(0, len(keys) - MAX_SHOWN_KEYS), when=when,
                label_chars=MAX_LABEL_CHARS,
                snippets=snippets(str(request.base_url).rstrip("/"), snippet_model(request)))
