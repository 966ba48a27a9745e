"""The console's browser-side receipt check (static/js/verify.js) agrees with Python's.

verify.js re-implements canonical JSON, the SSE transcript rule, the attestation blob's checks
and verify_receipt's steps in JavaScript; these tests run it under node against values and
streams Python produces, and compare byte for byte and step for step. They need node (.ci/run
installs Debian's nodejs when it is missing) and fail without it: nothing is skipped silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from darkbloom.client.verify import verify_receipt
from darkbloom.crypto.signing import ATTESTATION_CONTEXT, IdentityKey, canonical_json
from darkbloom.protocol.sse import DONE, Transcript, receipt_comment, split_stream
from darkbloom.protocol.trust import Receipt, SignedReceipt

NODE = shutil.which("node")
VERIFY_JS = Path(__file__).resolve().parents[2] / "src/darkbloom/console/static/js/verify.js"

RUNNER = """
const V = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
(async () => {
  const out = [];
  for (const job of input) {
    if (job.kind === "canonical") {
      try { out.push(V.canonicalJson(V.parseJson(job.text))); } catch (e) { out.push("ERROR " + e.message); }
    } else if (job.kind === "stream") {
      const bytes = Buffer.from(job.stream_b64, "base64");
      const reader = new V.SseReader();
      const events = [];
      let at = 0;
      for (const size of job.chunks) {
        events.push(...reader.push(new Uint8Array(bytes.subarray(at, at + size))));
        at += size;
      }
      events.push(...reader.push(new Uint8Array(bytes.subarray(at))), ...reader.end());
      const receiptText = events.map(V.receiptTextOf).filter((r) => r !== null).pop() ?? null;
      const transcript = V.concat(...events.map(V.transcriptPart));
      const requestBody = job.request_b64 ? new Uint8Array(Buffer.from(job.request_b64, "base64")) : null;
      const steps = await V.verifyStream({ receiptText, transcript, events, providers: job.providers,
                                           requestBody, catalog: job.catalog ?? null });
      out.push({ transcript_b64: Buffer.from(transcript).toString("base64"),
                 steps: steps.map((s) => [s.name, s.ok]) });
    }
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_js(jobs: list[dict[str, Any]]) -> list[Any]:
    assert NODE is not None, "node is missing: .ci/run installs Debian's nodejs"
    done = subprocess.run([NODE, "-e", RUNNER, str(VERIFY_JS)], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


ODD_TEXTS = [
    '"plain"', '"quote \\" backslash \\\\ slash / and \\/"', '"\\u0000\\u0001\\u001f\\u007f\\u0080"',
    '"\\b\\f\\n\\r\\t"', '"caf\u00e9 \u2028 \u2029 \ufeff \uffff"', '"\ud83d\ude00 emoji \U0001f680"',
    '"\\ud800 lone high"', '"\\udc00 lone low"', '"\\uD83D\\uDE00 upper-case escape"',
    '{"b":1,"a":2,"\u00e9":3,"\uffff":4,"\U0001f600":5,"A":6,"":7}',
    '{"a":1,"a":2}', '[1,-0,0,123456789012345678901234567890,-42]',
    '[1.0,-0.0,0.1,1e-05,0.0001,1e16,1e15,1.5e300,2.5,1E5,1.50,123456789.123,5e-324,1e400,-1e400]',
    '[NaN,Infinity,-Infinity]', '{"nested":{"z":[true,false,null,{"y":"x"}],"a":{}}}', '[]', '{}',
    ' { "spaced" : [ 1 , 2 ] } ',
]


def test_canonical_json_matches_python_on_odd_values() -> None:
    got = run_js([{"kind": "canonical", "text": text} for text in ODD_TEXTS])
    want = [canonical_json(json.loads(text)).decode("ascii") for text in ODD_TEXTS]
    assert got == want


def test_json_python_refuses_is_refused() -> None:
    bad = ['{"a":1,}', "[1,]", "01", '"\x01"', '"\\x"', "{'a':1}", "1 2", "", "[1"]
    for text in bad:
        with pytest.raises(ValueError):
            json.loads(text)
    got = run_js([{"kind": "canonical", "text": text} for text in bad])
    assert all(str(g).startswith("ERROR") for g in got), got


# --- whole streams -----------------------------------------------------------------------------

KEY = IdentityKey.generate()
ENCRYPTION_KEY = base64.b64encode(bytes(range(32))).decode()


def listing(key: IdentityKey = KEY, encryption_key: str = ENCRYPTION_KEY,
            **changes: Any) -> list[dict[str, Any]]:
    inner = {"v": 2, "publicKey": key.public_b64, "encryptionPublicKey": encryption_key,
             "chipName": "Test chip \u00e9", "timestamp": "2026-01-01T00:00:00Z", "platform": "linux",
             "ptraceScope": -1, "coreDumpsDisabled": True, "secureBootEnabled": False,
             "kernelLockdown": "none", "ratio": 0.5}
    raw = canonical_json(inner)
    entry = {"identity_public_key": key.public_b64, "encryption_public_key": encryption_key,
             "attestation_raw": base64.b64encode(raw).decode(),
             "attestation_signature": key.sign(ATTESTATION_CONTEXT + raw), "chip_name": "Test chip",
             "trust_level": "self_signed"}
    entry.update(changes)
    return [{"identity_public_key": "someone-else"}, entry]


def chunk(delta: dict[str, Any]) -> str:
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": None}]}, ensure_ascii=False, separators=(",", ":"))


def stream(contents: list[str], key: IdentityKey = KEY, signer: IdentityKey | None = None,
           request_sha256: str = "0" * 64, model: str = "smollm2-135m") -> str:
    events = [chunk({"role": "assistant", "content": ""}),
              chunk({"reasoning_content": "thinking\u2026"}),
              *(chunk({"content": c}) for c in contents),
              'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}']
    transcript = Transcript(stream=True)
    for event in events:
        transcript.add(event)
    receipt = Receipt(request_id="r-1", model=model, endpoint="/v1/chat/completions",
                      provider_key=key.public_b64, encryption_key=ENCRYPTION_KEY, weight_hash="ab" * 32,
                      quantization="Q4_1", request_sha256=request_sha256,
                      response_sha256=transcript.hexdigest(), prompt_tokens=3, completion_tokens=4,
                      created=1_800_000_000)
    signed = SignedReceipt(receipt=receipt, signature=(signer or key).sign(receipt.message()))
    return "\n\n".join([*events, receipt_comment(signed), DONE]) + "\n\n"


def python_steps(text: str, providers: list[dict[str, Any]]) -> tuple[bytes, list[list[Any]]]:
    transcript, signed = split_stream(text)
    assert signed is not None
    steps = verify_receipt(signed.receipt.model_dump(), signed.signature, transcript, providers)
    return transcript, [[s.name, s.ok] for s in steps]


def stream_job(text: str, providers: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    data = text.encode()
    rng = random.Random(seed)
    chunks = [rng.randint(1, 40) for _ in range(len(data) // 20)]
    return {"kind": "stream", "stream_b64": base64.b64encode(data).decode(), "chunks": chunks,
            "providers": providers}


def test_streams_verify_as_python_verifies_them() -> None:
    contents = ["Hello", " w\u00f6rld", " \U0001f680", " line\u2028sep", " <img src=x>", ' "q"\\']
    good = stream(contents)
    tampered = good.replace("w\u00f6rld", "w\u00f6rle", 1)
    cases = [
        (good, listing()),
        (tampered, listing()),
        (good, listing(encryption_key=base64.b64encode(b"\x01" * 32).decode())),  # restarted
        (good, [listing()[0]]),  # provider gone from the listing
        (stream(contents, signer=IdentityKey.generate()), listing()),  # signed by another key
        (good, listing(attestation_signature=listing()[1]["attestation_signature"][:-8] + "AAAAAAA=")),
    ]
    got = run_js([stream_job(text, providers, seed) for seed, (text, providers) in enumerate(cases)])
    for (text, providers), js in zip(cases, got, strict=True):
        transcript, steps = python_steps(text, providers)
        assert base64.b64decode(js["transcript_b64"]) == transcript
        assert js["steps"][0] == ["stream holds only events the receipt covers", True]
        assert js["steps"][1:] == steps
    assert all(ok for _, ok in got[0]["steps"])
    failed = [[name for name, ok in js["steps"] if not ok] for js in got]
    assert failed[1] == ["response hash matches the bytes received"]
    assert failed[2] == ["attestation blob is signed by that identity key and binds the receipt's "
                         "encryption key"]
    assert failed[3] == ["provider is in the attestation listing"]
    assert failed[4] == ["receipt signature is valid"]
    assert failed[5] == failed[2]


def test_a_stream_with_an_event_the_receipt_cannot_cover_is_flagged() -> None:
    good = stream(["Hi"])
    smuggled = good.replace("data: [DONE]", "event: message\ndata: {\"x\":1}\n\ndata: [DONE]")
    got = run_js([stream_job(smuggled, listing(), 7)])[0]
    assert got["steps"][0] == ["stream holds only events the receipt covers", False]


def test_the_receipt_is_tied_to_the_body_sent_and_the_model_asked_for() -> None:
    """The request hash step is Python's (request_body); the model and weights steps are the
    console's: the receipt's model must be the one the sent body names, with that model's weights."""
    body = json.dumps({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi \u00e9"}],
                       "stream": True}, ensure_ascii=False).encode()
    other = body.replace(b"Hi", b"Yo")
    premium = body.replace(b"smollm2-135m", b"premium-405b")
    catalog = {"smollm2-135m": "ab" * 32, "premium-405b": "cd" * 32}
    good = stream(["Hello"], request_sha256=hashlib.sha256(body).hexdigest())
    swapped = stream(["Hello"], request_sha256=hashlib.sha256(premium).hexdigest())
    cases = [(good, body), (good, other), (swapped, premium)]
    got = run_js([{**stream_job(text, listing(), seed), "request_b64": base64.b64encode(sent).decode(),
                   "catalog": catalog} for seed, (text, sent) in enumerate(cases)])
    for (text, sent), js in zip(cases, got, strict=True):
        transcript, signed = split_stream(text)
        assert signed is not None
        steps = verify_receipt(signed.receipt.model_dump(), signed.signature, transcript, listing(),
                               request_body=sent)
        assert js["steps"][1:len(steps) + 1] == [[s.name, s.ok] for s in steps]
    names = [name for name, _ in got[0]["steps"]]
    assert names[-4:] == ["request hash matches the body sent", "receipt signature is valid",
                          "model is the one asked for", "weights are the catalog's for this model"]
    assert all(ok for _, ok in got[0]["steps"])
    failed = [[name for name, ok in js["steps"] if not ok] for js in got]
    assert failed[1] == ["request hash matches the body sent"]
    # The body asked for premium-405b; the provider served (and signed) smollm2-135m.
    assert failed[2] == ["model is the one asked for", "weights are the catalog's for this model"]
