"""Provider identity and attestation with real processes: a persistent 0600 identity key, a
signed blob the coordinator verifies, a public listing a consumer can check on its own, and
trust headers on every response."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import httpx
import openai
import websockets

from darkbloom.crypto.signing import canonical_json, verify
from tests.e2e.harness import MODEL, Coordinator, Provider


def _listing(stack: Coordinator) -> list[dict[str, object]]:
    return list(httpx.get(f"{stack.base_url}/v1/providers/attestation").json()["providers"])


def test_listing_is_verifiable_by_the_consumer(stack: Coordinator) -> None:
    [entry] = [p for p in _listing(stack) if p["trust_level"] == "self_signed"]
    raw = base64.b64decode(str(entry["attestation_raw"]))
    blob = json.loads(raw)
    # The third-party recipe of docs/security.md: the context string, then the exact bytes.
    assert verify(blob["publicKey"], b"darkbloom/attestation/v2\n" + raw, str(entry["attestation_signature"]))
    assert not verify(blob["publicKey"], raw, str(entry["attestation_signature"]))
    assert blob["publicKey"] == entry["identity_public_key"] == entry["se_public_key"]
    assert blob["encryptionPublicKey"] == entry["encryption_public_key"]
    assert entry["models"] == [MODEL]


def test_responses_carry_trust_headers(stack: Coordinator, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-provider-attested"] == "true"
    assert raw.headers["x-provider-trust-level"] == "self_signed"
    identity = raw.headers["x-attestation-se-public-key"]
    assert identity in {p["identity_public_key"] for p in _listing(stack)}


def test_identity_key_is_private_and_survives_restarts(tmp_path: Path) -> None:
    coordinator = Coordinator(tmp_path).start()
    provider = Provider(coordinator).start()
    try:
        key_file = tmp_path / "provider-config" / "identity.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        first = {p["identity_public_key"] for p in _listing(coordinator)}
        provider.stop()
        coordinator.wait_providers(0)
        provider.start()
        assert {p["identity_public_key"] for p in _listing(coordinator)} == first
        # The X25519 key is per process (protocol.md §6), the identity key is not.
        assert len(first) == 1
    finally:
        provider.stop()
        coordinator.stop()


def test_provider_without_attestation_is_not_routed(stack: Coordinator) -> None:
    async def go() -> dict[str, object]:
        async with websockets.connect(stack.ws_url, additional_headers={
                "Authorization": f"Bearer {stack.provider_token}"}) as ws:
            await ws.send(json.dumps({
                "type": "register", "public_key": base64.b64encode(os.urandom(32)).decode(),
                "models": [{"id": MODEL, "weight_hash": _weight_hash()}], "backend": "x"}))
            registered = json.loads(await ws.recv())
            assert stack.provider_count() == 1  # only the real, attested provider counts
            listing = [p for p in _listing(stack) if p["trust_level"] == "none"]
            assert listing and listing[0]["attestation_raw"] is None
            return dict(registered)

    registered = asyncio.run(go())
    assert registered["trust_level"] == "none" and registered["routable"] is False
    assert registered["accepted_models"] == [MODEL]


def _weight_hash() -> str:
    from darkbloom.inference.catalog import DEFAULT_MODEL

    return DEFAULT_MODEL.weight_hash


def _post(stack: Coordinator, path: str, body: dict[str, object]) -> tuple[bytes, httpx.Response]:
    raw = json.dumps(body).encode()
    response = httpx.post(f"{stack.base_url}{path}", content=raw, timeout=60,
                          headers={"Authorization": f"Bearer {stack.api_key}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 200
    return raw, response


def test_non_streamed_receipt_verifies(stack: Coordinator) -> None:
    from darkbloom.client.verify import decode_receipt_header, verify_receipt

    sent, response = _post(stack, "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    receipt = decode_receipt_header(response.headers["x-darkbloom-receipt"])
    assert response.headers["x-response-hash"] == receipt["response_sha256"]
    assert receipt["request_id"] == response.headers["x-inference-job-id"]
    assert receipt["model"] == MODEL and receipt["weight_hash"] and receipt["quantization"] == "Q4_1"
    steps = verify_receipt(receipt, response.headers["x-se-signature"], response.content,
                           _listing(stack), sent)  # type: ignore[arg-type]
    assert all(step.ok for step in steps), steps
    tampered = verify_receipt(receipt, response.headers["x-se-signature"], response.content + b" ",
                              _listing(stack), sent)  # type: ignore[arg-type]
    assert [s.name for s in tampered if not s.ok] == ["response hash matches the bytes received"]


def test_darkbloom_verify_cli_on_a_saved_stream(stack: Coordinator, tmp_path: Path) -> None:
    import subprocess
    import sys

    _, response = _post(stack, "/v1/messages", {
        "model": MODEL, "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    saved, listing = tmp_path / "stream.txt", tmp_path / "attestation.json"
    saved.write_bytes(response.content)
    listing.write_text(httpx.get(f"{stack.base_url}/v1/providers/attestation").text)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "darkbloom", "verify", str(saved),
                               "--attestation", str(listing)], capture_output=True, text=True)

    ok = run()
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.count("✓") == 5 and "✗" not in ok.stdout
    saved.write_bytes(response.content.replace(b"text_delta", b"text_delt4", 1))
    bad = run()
    assert bad.returncode == 1 and "✗ response hash" in bad.stdout


def test_minimum_trust_level_per_request(stack: Coordinator, client: openai.OpenAI) -> None:
    ask = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    ok = client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"x-min-trust-level": "self_signed"})  # type: ignore[call-overload]
    assert ok.headers["x-provider-trust-level"] == "self_signed"
    try:
        client.chat.completions.create(**ask, extra_headers={"x-min-trust-level": "hardware"})  # type: ignore[call-overload]
        raise AssertionError("a hardware-only request must not be served by a self_signed provider")
    except openai.InternalServerError as exc:
        assert exc.status_code == 503
        error = exc.response.json()["error"]
        assert error["code"] == "trust_level_unavailable" and "hardware" in error["message"]
    try:
        client.chat.completions.create(**ask, extra_headers={"x-min-trust-level": "gold"})  # type: ignore[call-overload]
        raise AssertionError("an unknown level is a 400")
    except openai.BadRequestError as exc:
        assert exc.response.json()["error"]["param"] == "x-min-trust-level"


def test_provider_process_has_core_dumps_disabled(tmp_path: Path) -> None:
    """A core dump would hold decrypted prompts: `darkbloom serve` sets RLIMIT_CORE to 0."""
    coordinator = Coordinator(tmp_path).start()
    provider = Provider(coordinator).start()
    try:
        assert provider.proc is not None
        limits = Path(f"/proc/{provider.proc.pid}/limits").read_text()
        [core] = [line for line in limits.splitlines() if line.startswith("Max core file size")]
        assert core.split()[4:6] == ["0", "0"]
        blob = json.loads(base64.b64decode(str(_listing(coordinator)[0]["attestation_raw"])))
        assert blob["coreDumpsDisabled"] is True
    finally:
        provider.stop()
        coordinator.stop()


def test_hardware_trust_through_an_operator_ca(tmp_path: Path) -> None:
    """CSR from `darkbloom identity csr`, signed by the operator's CA (via an intermediate),
    installed with `darkbloom identity install-cert`: the provider is then `hardware`."""
    import subprocess
    import sys

    from tests.ca import CA, pem_chain

    root = CA()
    inter = root.intermediate()
    (tmp_path / "root.pem").write_bytes(root.pem())
    coordinator = Coordinator(tmp_path, trust_root_ca_files=json.dumps([str(tmp_path / "root.pem")]))
    coordinator.start()
    provider = Provider(coordinator)

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "darkbloom", *args], env=provider.env,
                              capture_output=True, text=True, check=True)
        return done.stdout

    csr = cli("identity", "csr").encode()
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pem_chain(inter.sign_csr(csr), inter.cert))
    cli("identity", "install-cert", str(chain))
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(pem_chain(inter.leaf(CA().key.public_key()), inter.cert))
    refused = subprocess.run([sys.executable, "-m", "darkbloom", "identity", "install-cert", str(wrong)],
                             env=provider.env, capture_output=True, text=True)
    assert refused.returncode == 1
    provider.start()
    try:
        [entry] = _listing(coordinator)
        assert entry["trust_level"] == "hardware" and len(entry["certificate_chain"]) == 2  # type: ignore[arg-type]
        reply = coordinator.client().chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-min-trust-level": "hardware"})
        assert reply.headers["x-provider-trust-level"] == "hardware"
        from darkbloom.client.blind import seal_to_providers
        from darkbloom.client.verify import decode_receipt_header, verify_receipt

        receipt = decode_receipt_header(reply.headers["x-darkbloom-receipt"])
        signature, body = reply.headers["x-se-signature"], reply.http_response.content
        pinned = verify_receipt(receipt, signature, body, _listing(coordinator), root_cas=[root.cert])  # type: ignore[arg-type]
        assert all(step.ok for step in pinned), pinned
        stranger = verify_receipt(receipt, signature, body, _listing(coordinator), root_cas=[CA().cert])  # type: ignore[arg-type]
        assert [s.name for s in stranger if not s.ok] == ["certificate chain leads to a pinned root"]
        ask = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        sealed, channels = seal_to_providers(ask, _listing(coordinator), root_cas=[root.cert])  # type: ignore[arg-type]
        assert len(channels) == 1
        from darkbloom.client.blind import MEDIA_TYPE, open_response

        blind = httpx.post(f"{coordinator.base_url}/v1/chat/completions", content=sealed, timeout=60,
                           headers={"Authorization": f"Bearer {coordinator.api_key}",
                                    "Content-Type": MEDIA_TYPE})
        assert blind.status_code == 200  # pinned roots, checked locally, answer checked chunk by chunk
        open_response(channels, blind.headers["x-provider-id"], blind.text, stream=False)
        try:
            seal_to_providers(ask, _listing(coordinator), root_cas=[CA().cert])  # type: ignore[arg-type]
            raise AssertionError("no provider chains to a root we do not know")
        except LookupError:
            pass
    finally:
        provider.stop()
        coordinator.stop()


def test_receipt_lookup_by_request_id(stack: Coordinator) -> None:
    import subprocess
    import sys

    _, response = _post(stack, "/v1/chat/completions", {
        "model": MODEL, "max_tokens": 3, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    request_id = response.headers["x-request-id"]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    for _ in range(50):  # the record is written just after the stream ends
        found = httpx.get(f"{stack.base_url}/v1/receipts/{request_id}", headers=headers)
        if found.status_code == 200:
            break
    assert found.status_code == 200
    signed = found.json()
    assert signed["receipt"]["v"] == 2
    assert verify(signed["receipt"]["provider_key"],
                  b"darkbloom/receipt/v2\n" + canonical_json(signed["receipt"]), signed["signature"])
    other_key = subprocess.run([sys.executable, "-m", "darkbloom", "keys", "create", "--account", "other"],
                               env=stack.env, capture_output=True, text=True, check=True).stdout.strip()
    other = httpx.get(f"{stack.base_url}/v1/receipts/{request_id}",
                      headers={"Authorization": f"Bearer {other_key}"})
    assert other.status_code == 404 and other.json()["error"]["type"] == "not_found"


def test_per_key_minimum_trust_level(stack: Coordinator) -> None:
    import subprocess
    import sys

    strict = subprocess.run([sys.executable, "-m", "darkbloom", "keys", "create", "--min-trust-level",
                             "hardware"], env=stack.env, capture_output=True, text=True,
                            check=True).stdout.strip()
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=strict, max_retries=0)
    try:
        client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("a hardware-only key must not be served by a self_signed provider")
    except openai.InternalServerError as exc:
        assert exc.response.json()["error"]["code"] == "trust_level_unavailable"
    try:  # a laxer header cannot lower the key's own minimum
        client.chat.completions.create(model=MODEL, max_tokens=2, extra_headers={"x-min-trust-level": "none"},
                                       messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("the header must not downgrade the key's setting")
    except openai.InternalServerError as exc:
        assert exc.status_code == 503
