"""Hostile review of the console's in-browser receipt check (static/js/verify.js) and the answer
renderer (static/js/markdown.js), under node.

The attacker is a coordinator (it serves the stream, the attestation listing and the catalog on
the page) or a provider (it signs what it likes). Every stream, receipt, signature and listing
below goes through verify.js and through Python's reference (``split_stream`` +
``verify_receipt``): verify.js must never pass what Python fails. The findings were strict xfails
asserting the correct behaviour; they are fixed and pass, with the tests that pinned what held.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from darkbloom.client.verify import verify_receipt
from darkbloom.crypto.signing import (
    ATTESTATION_CONTEXT,
    RECEIPT_CONTEXT,
    IdentityKey,
    canonical_json,
    is_canonical_key,
    verify,
)
from darkbloom.protocol.sse import DONE, MalformedStream, in_transcript, split_stream, transcript_part
from tests.unit.test_console_verify_js import ENCRYPTION_KEY, KEY, chunk, listing

NODE = shutil.which("node")
JS = Path(__file__).resolve().parents[2] / "src/darkbloom/console/static/js"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

RUNNER = """
const V = require(process.argv[1]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
(async () => {
  const out = [];
  for (const job of input) {
    try {
      if (job.kind === "stream") {
        const bytes = Buffer.from(job.stream_b64, "base64");
        const reader = new V.SseReader();
        const events = [...reader.push(new Uint8Array(bytes)), ...reader.end()];
        // As chat.js does: the last receipt comment seen is the one verified.
        const receiptText = events.map(V.receiptTextOf).filter((r) => r !== null).pop() ?? null;
        const transcript = V.concat(...events.map(V.transcriptPart));
        const steps = await V.verifyStream({ receiptText, transcript, events,
                                             providers: job.providers, catalog: job.catalog ?? null });
        out.push({ steps: steps.map((s) => [s.name, s.ok, s.detail]) });
      } else if (job.kind === "sig") {
        out.push(await V.verifySignature(job.key, Buffer.from(job.data_b64, "base64"), job.sig));
      } else if (job.kind === "key") {
        out.push(await V.isCanonicalKey(job.key));
      }
    } catch (e) {
      out.push("THROW " + e.message);
    }
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_js(jobs: list[dict[str, Any]]) -> list[Any]:
    assert NODE is not None, "node is missing: .ci/run installs Debian's nodejs"
    done = subprocess.run([NODE, "-e", RUNNER, str(JS / "verify.js")], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


# --- building hostile streams -------------------------------------------------------------------

OTHER = IdentityKey.generate()
GOOD = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}),
        chunk({"content": " world"}),
        'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}']


def transcript_of(events: list[str]) -> bytes:
    """The transcript rule applied to events as they are (what a provider would hash)."""
    return b"".join(transcript_part(e, stream=True) for e in events if in_transcript(e))


def receipt_fields(events: list[str], **changes: Any) -> dict[str, Any]:
    import hashlib

    fields: dict[str, Any] = {
        "v": 2, "request_id": "r-1", "model": "smollm2-135m", "endpoint": "/v1/chat/completions",
        "provider_key": KEY.public_b64, "encryption_key": ENCRYPTION_KEY, "weight_hash": "ab" * 32,
        "quantization": "Q4_1", "request_sha256": "0" * 64,
        "response_sha256": hashlib.sha256(transcript_of(events)).hexdigest(),
        "prompt_tokens": 3, "completion_tokens": 2, "created": 1_800_000_000}
    fields.update(changes)
    return fields


def comment(fields: dict[str, Any], signer: IdentityKey = KEY, receipt_json: str | None = None) -> str:
    """A receipt comment whose signature covers the canonical JSON of ``fields`` (signed however
    odd the fields are: a hostile provider signs anything); ``receipt_json`` spells it on the wire."""
    signature = signer.sign(RECEIPT_CONTEXT + canonical_json(fields))
    body = receipt_json if receipt_json is not None else json.dumps(fields, separators=(",", ":"))
    return f': darkbloom-receipt {{"receipt":{body},"signature":"{signature}"}}'


def sse(events: list[str]) -> str:
    return "\n\n".join(events) + "\n\n"


def python_passes(text: str, providers: list[dict[str, Any]]) -> bool:
    try:
        transcript, signed = split_stream(text)
    except MalformedStream:
        return False
    if signed is None:
        return False
    steps = verify_receipt(signed.receipt.model_dump(), signed.signature, transcript, providers)
    return all(s.ok for s in steps)


def js_passes(result: Any) -> bool:
    return isinstance(result, dict) and all(ok is not False for _, ok, _ in result["steps"])


def stream_job(text: str, providers: list[dict[str, Any]], catalog: dict[str, str] | None = None
               ) -> dict[str, Any]:
    return {"kind": "stream", "stream_b64": base64.b64encode(text.encode("utf-8", "surrogatepass")).decode(),
            "providers": providers, "catalog": catalog}


def verdicts(cases: dict[str, tuple[str, list[dict[str, Any]]]]) -> dict[str, tuple[bool, bool]]:
    """{case: (verify.js passes, Python passes)}."""
    got = run_js([stream_job(text, providers) for text, providers in cases.values()])
    return {name: (js_passes(js), python_passes(text, providers))
            for (name, (text, providers)), js in zip(cases.items(), got, strict=True)}


# --- the stream: where the receipt sits, and what else the stream holds ------------------------


def test_stream_shapes_get_the_same_verdict_as_python() -> None:
    valid = comment(receipt_fields(GOOD))
    forged = comment(receipt_fields(GOOD), signer=OTHER)
    evil = chunk({"content": " EVIL"})
    cr = GOOD[1] + "\r"
    no_space = 'data:{"choices":[{"index":0,"delta":{"content":" EVIL"}}]}'
    two_data = GOOD[1] + "\n" + evil
    unnamed = "event: message\n" + GOOD[1]
    typed = 'data: {"type":"ping","choices":[]}'
    named_ok = "event: ping\n" + typed
    id_line = "id: 7\n" + GOOD[1]
    retry_line = "retry: 10\n" + GOOD[1]

    def signed(events: list[str], *tail: str) -> str:
        return sse([*events, comment(receipt_fields(events)), DONE, *tail])

    cases = {
        "plain": (sse([*GOOD, valid, DONE]), listing()),
        "two receipts, forged then valid": (sse([*GOOD, forged, valid, DONE]), listing()),
        "two receipts, valid then forged": (sse([*GOOD, valid, forged, DONE]), listing()),
        "receipt before the last data event": (sse([*GOOD[:-1], comment(receipt_fields(GOOD[:-1])),
                                                    evil, DONE]), listing()),
        "an event after the receipt and [DONE]": (sse([*GOOD, valid, DONE, evil]), listing()),
        "receipt covering fewer events than shown": (sse([*GOOD, evil, valid, DONE]), listing()),
        "other comments": (sse([": keep-alive", *GOOD, ": x", valid, DONE]), listing()),
        "extra blank lines": ("\n\n\n" + "\n\n\n".join([*GOOD, valid, DONE]) + "\n\n\n", listing()),
        "CR in a data line": (signed([GOOD[0], cr, *GOOD[2:]]), listing()),
        "CRLF line ends": ("\r\n\r\n".join([*GOOD, valid, DONE]) + "\r\n\r\n", listing()),
        "data: without a space": (signed([*GOOD, no_space]), listing()),
        "two data lines": (signed([GOOD[0], two_data, *GOOD[2:]]), listing()),
        "event: name its data lacks": (signed([GOOD[0], unnamed, *GOOD[2:]]), listing()),
        "event: name its data repeats": (signed([*GOOD, named_ok]), listing()),
        "data with a type but no event: line": (signed([*GOOD, typed]), listing()),
        "id: line": (signed([GOOD[0], id_line, *GOOD[2:]]), listing()),
        "retry: line": (signed([GOOD[0], retry_line, *GOOD[2:]]), listing()),
        "comment line inside a data event": (signed([GOOD[0], ": c\n" + GOOD[1], *GOOD[2:]]), listing()),
        "receipt comment with a second line": (sse([*GOOD, valid + "\n" + evil, DONE]), listing()),
    }
    got = verdicts(cases)
    assert {name: js for name, (js, py) in got.items() if js != py} == {}
    assert got["plain"] == (True, True)
    assert got["two receipts, forged then valid"] == (True, True)
    assert got["event: name its data repeats"] == (True, True)
    assert got["other comments"] == (True, True)
    for name in ("two receipts, valid then forged", "receipt before the last data event",
                 "an event after the receipt and [DONE]", "receipt covering fewer events than shown",
                 "CR in a data line", "CRLF line ends", "data: without a space", "two data lines",
                 "event: name its data lacks", "id: line", "retry: line",
                 "comment line inside a data event", "receipt comment with a second line"):
        assert got[name] == (False, False), name


def test_a_bom_before_an_event_fails_as_in_python() -> None:
    valid = comment(receipt_fields(GOOD))
    cases = {
        "BOM before a data event": (sse([GOOD[0], "\ufeff" + GOOD[1], *GOOD[2:], valid, DONE]), listing()),
        "BOM before the receipt comment": (sse([*GOOD, "\ufeff" + valid, DONE]), listing()),
    }
    got = verdicts(cases)
    assert got == {name: (False, False) for name in cases}


# --- the receipt's JSON -------------------------------------------------------------------------


def test_receipt_spellings_get_the_same_verdict_as_python() -> None:
    fields = receipt_fields(GOOD)
    text = json.dumps(fields, separators=(",", ":"))
    sig_for = comment  # signature always over canonical_json(fields given)
    cafe = receipt_fields(GOOD, model="caf\u00e9 \U0001f680 \u2028")
    cases = {
        "pretty JSON": sig_for(fields, receipt_json=json.dumps(fields, indent=2).replace("\n", " ")),
        "duplicate key, true value last": sig_for(fields, receipt_json=text.replace(
            '"model":', '"model":"evil","model":', 1)),
        "duplicate key, true value first": sig_for(fields, receipt_json=text.replace(
            '"model":"smollm2-135m"', '"model":"smollm2-135m","model":"evil"', 1)),
        "created -0": sig_for(receipt_fields(GOOD, created=0), receipt_json=json.dumps(
            receipt_fields(GOOD, created=0)).replace('"created": 0', '"created": -0')),
        "created 1.8e9": sig_for(fields, receipt_json=text.replace("1800000000", "1.8e9")),
        "created 1800000000.0": sig_for(fields, receipt_json=text.replace("1800000000", "1800000000.0")),
        "v 2.0": sig_for(fields, receipt_json=text.replace('"v":2', '"v":2.0')),
        "v absent": sig_for(fields, receipt_json=text.replace('"v":2,', "")),
        "v 3": sig_for({**fields, "v": 3}),
        "prompt_tokens true": sig_for(fields, receipt_json=text.replace('"prompt_tokens":3',
                                                                        '"prompt_tokens":true')),
        "non-ASCII model, raw": sig_for(cafe, receipt_json=json.dumps(cafe, ensure_ascii=False)),
        "non-ASCII model, escaped": sig_for(cafe, receipt_json=json.dumps(cafe)),
        "escaped slash": sig_for(fields, receipt_json=text.replace("/v1/chat/", "\\/v1\\/chat\\/")),
        "upper-case hex": sig_for({**fields, "request_sha256": "A" * 64}),
        "model of 257 chars": sig_for({**fields, "model": "m" * 257}),
        "model of 256 astral chars": sig_for({**fields, "model": "\U0001f680" * 256}),
        "null weight hash": sig_for({**fields, "weight_hash": None}),
        "prompt_tokens 2**31": sig_for({**fields, "prompt_tokens": 2**31}),
        "created 2**40": sig_for({**fields, "created": 2**40}),
        "__proto__ field": sig_for({**fields, "__proto__": 1}),
        "signature key twice": sig_for(fields).replace('{"receipt"', '{"signature":"AAAA","receipt"'),
    }
    got = verdicts({name: (sse([*GOOD, c, DONE]), listing()) for name, c in cases.items()})
    # verify.js may be stricter ("v": 2.0 passes pydantic's Literal[2], not verify.js), never laxer.
    assert [name for name, (js, py) in got.items() if js and not py] == []
    for name in ("pretty JSON", "duplicate key, true value last", "created -0", "v absent",
                 "non-ASCII model, raw", "non-ASCII model, escaped", "escaped slash",
                 "model of 256 astral chars", "null weight hash", "created 2**40",
                 "signature key twice"):
        assert got[name] == (True, True), name


def test_receipt_fields_named_after_object_prototype_members_are_refused() -> None:
    fields = receipt_fields(GOOD)
    cases = {name: (sse([*GOOD, comment({**fields, name: 1}), DONE]), listing())
             for name in ("constructor", "toString", "valueOf", "hasOwnProperty")}
    got = verdicts(cases)
    assert got == {name: (False, False) for name in cases}


def test_a_receipt_with_a_lone_surrogate_fails_as_in_python() -> None:
    fields = receipt_fields(GOOD, model="smollm2-135m\ud800")
    good = sse([*GOOD, comment(receipt_fields(GOOD)), DONE])
    inner = {"publicKey": KEY.public_b64, "encryptionPublicKey": ENCRYPTION_KEY, "platform": "\udc00"}
    got = verdicts({"in the receipt": (sse([*GOOD, comment(fields), DONE]), listing()),
                    "in the attestation blob": (good, [blob_entry(canonical_json(inner))])})
    assert got == {"in the receipt": (False, False), "in the attestation blob": (False, False)}


# --- keys and signatures ------------------------------------------------------------------------


def der_variants(signature_b64: str) -> dict[str, str]:
    der = base64.b64decode(signature_b64)
    r, s = decode_dss_signature(der)

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    def integer(value: bytes) -> bytes:
        return b"\x02" + bytes([len(value)]) + value

    def seq(body: bytes) -> bytes:
        return b"\x30" + bytes([len(body)]) + body

    r_bytes = r.to_bytes((r.bit_length() + 8) // 8, "big")
    s_bytes = s.to_bytes((s.bit_length() + 8) // 8, "big")
    raw_r = r.to_bytes(32, "big")
    variants = {
        "original": signature_b64,
        "high S": b64(encode_dss_signature(r, P256_N - s)),
        "r with an extra leading zero": b64(seq(integer(b"\x00" + r_bytes) + integer(s_bytes))),
        "r as 32 raw bytes (negative when high bit set)": b64(seq(integer(raw_r) + integer(s_bytes))),
        "trailing byte": b64(der + b"\x00"),
        "trailing byte in the sequence": b64(seq(integer(r_bytes) + integer(s_bytes) + b"\x00")),
        "long-form length": b64(b"\x30\x81" + bytes([len(der) - 2]) + der[2:]),
        "r + n": b64(encode_dss_signature(r + P256_N, s)),
        "s + n": b64(encode_dss_signature(r, s + P256_N)),
        "r = 0": b64(encode_dss_signature(0, s)),
        "swapped": b64(encode_dss_signature(s, r)),
        "raw r||s": b64(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "SET tag": b64(b"\x31" + der[1:]),
        "no padding": signature_b64.rstrip("="),
        "whitespace": signature_b64[:10] + " " + signature_b64[10:],
        "url-safe alphabet": signature_b64.replace("+", "-").replace("/", "_"),
    }
    return {name: v for name, v in variants.items() if name == "original" or v != signature_b64}


def test_odd_der_signatures_get_the_same_verdict_as_python() -> None:
    message = RECEIPT_CONTEXT + b'{"x":1}'
    jobs, want, names = [], [], []
    for attempt in range(6):  # several signatures: high bits of r and s vary
        signature = KEY.sign(message)
        for name, variant in der_variants(signature).items():
            names.append(f"{attempt}: {name}")
            jobs.append({"kind": "sig", "key": KEY.public_b64, "data_b64": base64.b64encode(message).decode(),
                         "sig": variant})
            want.append(verify(KEY.public_b64, message, variant))
    got = run_js(jobs)
    assert {n: (g, w) for n, g, w in zip(names, got, want, strict=True) if g != w} == {}
    passed = {n.split(": ", 1)[1] for n, g in zip(names, got, strict=True) if g}
    # high S is malleability, not forgery
    assert passed <= {"original", "high S"}, passed


def test_key_spellings_never_pass_in_js_when_python_refuses_them() -> None:
    raw = base64.b64decode(KEY.public_b64)
    canonical = KEY.public_b64
    bits = canonical[:-3] + chr(ord(canonical[-3]) + 1) + "=="  # non-zero padding bits
    spellings = {
        "canonical": canonical,
        "04 form": base64.b64encode(b"\x04" + raw).decode(),
        "non-canonical padding bits": bits,
        "no padding": canonical.rstrip("="),
        "compressed": base64.b64encode(bytes([2 + raw[-1] % 2]) + raw[:32]).decode(),
        "off the curve": base64.b64encode(raw[:32] + bytes(32)).decode(),
        "x only": base64.b64encode(raw[:32]).decode(),
    }
    message = RECEIPT_CONTEXT + b"{}"
    signature = KEY.sign(message)
    jobs = [{"kind": "key", "key": k} for k in spellings.values()]
    jobs += [{"kind": "sig", "key": k, "data_b64": base64.b64encode(message).decode(), "sig": signature}
             for k in spellings.values()]
    got = run_js(jobs)
    canon_js, sig_js = got[:len(spellings)], got[len(spellings):]
    for (name, key), c, s in zip(spellings.items(), canon_js, sig_js, strict=True):
        assert c == is_canonical_key(key), name
        assert not s or verify(key, message, signature), name  # JS passes => Python passes
    assert canon_js == [True] + [False] * (len(spellings) - 1)


# --- the listing (served by the coordinator) ----------------------------------------------------


def blob_entry(inner_text: bytes, signer: IdentityKey = KEY, identity: str | None = None) -> dict[str, Any]:
    return {"identity_public_key": identity or KEY.public_b64, "encryption_public_key": ENCRYPTION_KEY,
            "attestation_raw": base64.b64encode(inner_text).decode(),
            "attestation_signature": signer.sign(ATTESTATION_CONTEXT + inner_text),
            "chip_name": "c", "trust_level": "self_signed"}


def test_hostile_listings_get_the_same_verdict_as_python() -> None:
    good = sse([*GOOD, comment(receipt_fields(GOOD)), DONE])
    valid = listing()[1]
    forged = {**valid, "attestation_signature": OTHER.sign(ATTESTATION_CONTEXT + b"{}")}
    inner = {"publicKey": KEY.public_b64, "encryptionPublicKey": ENCRYPTION_KEY, "timestamp": "t"}

    def raw(obj: dict[str, Any]) -> bytes:
        return canonical_json(obj)

    dup = raw(inner).replace(b'{"encryptionPublicKey"', b'{"encryptionPublicKey":"x","encryptionPublicKey"')
    cases = {
        "valid": [valid],
        "forged entry first, valid second": [forged, valid],
        "valid first, forged second": [valid, forged],
        "entry key differs from blob publicKey": [{**blob_entry(raw({**inner, "publicKey": OTHER.public_b64}),
                                                               signer=OTHER)}],
        "blob signed by another key": [blob_entry(raw(inner), signer=OTHER)],
        "blob with a duplicate key": [blob_entry(dup)],
        "blob with unknown fields": [blob_entry(raw({**inner, "constructor": 1, "__proto__": {"a": 1},
                                                     "x": [1.5, -1, None, "\u00e9"]}))],
        "blob publicKey in 04 form": [blob_entry(raw({**inner, "publicKey": base64.b64encode(
            b"\x04" + base64.b64decode(KEY.public_b64)).decode()}))],
        "blob not binding the encryption key": [blob_entry(raw({**inner, "encryptionPublicKey": "other"}))],
        "blob encryption key null": [blob_entry(raw({**inner, "encryptionPublicKey": None}))],
        "blob timestamp null": [blob_entry(raw({**inner, "timestamp": None}))],
        "blob ptraceScope 1.0": [blob_entry(raw(inner)[:-1] + b',"ptraceScope":1.0}')],
        "blob with spaces": [blob_entry(json.dumps(inner).encode())],
        "blob with a BOM": [blob_entry(b"\xef\xbb\xbf" + raw(inner))],
        "entry without a blob": [{"identity_public_key": KEY.public_b64}],
        "entries that are not objects": [None, "x", 1, [KEY.public_b64]],
    }
    got = verdicts({name: (good, providers) for name, providers in cases.items()})
    assert {name: js for name, (js, py) in got.items() if js != py} == {}
    for name in ("valid", "valid first, forged second", "blob with unknown fields"):
        assert got[name] == (True, True), name
    assert got["forged entry first, valid second"] == (False, False)
    assert got["blob with a duplicate key"] == got["entry key differs from blob publicKey"] == (False, False)


def test_a_passed_check_does_not_vouch_for_a_hardware_claim_it_did_not_check() -> None:
    good = sse([*GOOD, comment(receipt_fields(GOOD)), DONE])
    entry = {**listing()[1], "trust_level": "hardware", "chip_name": "Apple M4 Ultra (Secure Enclave)"}
    [js] = run_js([stream_job(good, [entry])])
    assert js_passes(js)
    assert not any("hardware" in detail for _, ok, detail in js["steps"] if ok)


# --- the answer renderer (markdown.js) ----------------------------------------------------------

DOM_SHIM = """
class N { constructor(tag) { this.tag = tag; this.children = []; this.dataset = {}; }
  append(...c) { this.children.push(...c); }
  set textContent(t) { this.children = [new T(String(t))]; }
  get textContent() { return this.children.map((c) => c.textContent).join(""); }
  replaceChildren(...c) { this.children = c; } }
class T { constructor(t) { this.t = t; this.tag = "#text"; this.children = []; }
  get textContent() { return this.t; } }
globalThis.document = { createElement: (t) => new N(t), createTextNode: (t) => new T(t),
                        createDocumentFragment: () => new N("#fragment") };
const source = require("fs").readFileSync(process.argv[1], "utf8");
const md = new Function(source + "; return darkbloomMarkdown;")();
const text = require("fs").readFileSync(0, "utf8");
const box = new N("div");
const t0 = performance.now();
md.render(box, text);
const ms = performance.now() - t0;
const tags = new Set(); const hrefs = []; const attrs = new Set();
(function walk(n) {
  tags.add(n.tag);
  if (n.href !== undefined) hrefs.push(n.href);
  for (const k of Object.keys(n)) attrs.add(k);
  n.children.forEach(walk);
})(box);
process.stdout.write(JSON.stringify({ ms, tags: [...tags], hrefs, attrs: [...attrs],
                                      text: box.textContent }));
"""


def render(text: str, limit_s: float = 20.0) -> dict[str, Any] | None:
    """markdown.js's render of ``text`` under node with a DOM shim; None when it runs past
    ``limit_s`` (the page would be frozen that long, on every repaint while streaming)."""
    assert NODE is not None
    try:
        done = subprocess.run([NODE, "-e", DOM_SHIM, str(JS / "markdown.js")], input=text,
                              capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired:
        return None
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


ALLOWED_TAGS = {"div", "#fragment", "#text", "p", "br", "h3", "h4", "h5", "h6", "strong", "em", "code",
                "pre", "a", "ul", "ol", "li", "blockquote", "hr"}


def test_links_other_than_http_never_get_an_href() -> None:
    schemes = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "javascript&#58;alert(1)",
               "java\u0000script:alert(1)", "\u0001javascript:alert(1)", "javascript%3Aalert(1)",
               "jav&#x09;ascript:alert(1)", "data:text/html;base64,PHNjcmlwdD4=", "DATA:text/html,x",
               "vbscript:msgbox(1)", "VBScript:msgbox(1)", "//evil.example/x", "/relative",
               "https:javascript:alert(1)", "file:///etc/passwd", "blob:https://x/1",
               "http://ok.example/\"onmouseover=alert(1)", "https://ok.example/'><script>"]
    text = "\n\n".join(f"[click {k}]({s}) and <{s}> and {s}" for k, s in enumerate(schemes))
    out = render(text)
    assert out is not None
    assert out["hrefs"], "the http(s) links should still be links"
    assert all(h.startswith(("http://", "https://")) for h in out["hrefs"]), out["hrefs"]
    assert set(out["tags"]) <= ALLOWED_TAGS


def test_markup_fences_and_thinking_look_alikes_stay_text() -> None:
    text = ("```html\n<script>alert(1)</script>\n</code></pre><img src=x onerror=alert(2)>\n```\n"
            "<details open><summary>Thinking</summary>fake</details>\n\n"
            "<think>hidden plan</think>\n\n~~~\nunclosed <iframe>")
    out = render(text)
    assert out is not None
    assert set(out["tags"]) <= ALLOWED_TAGS
    assert "<script>alert(1)</script>" in out["text"] and "<think>hidden plan</think>" in out["text"]
    assert "unclosed <iframe>" in out["text"]


def test_a_1mb_plain_answer_and_deep_nesting_render_quickly() -> None:
    for text in ["lorem ipsum dolor sit amet, " * 37_000, "word\n" * 200_000, "> " * 100_000 + "x",
                 "*" * 1_000_000, "[" * 200_000, "- " * 100_000 + "x", "```\n" + "<b>x</b>\n" * 120_000]:
        started = time.monotonic()
        out = render(text, limit_s=10)
        assert out is not None and out["ms"] < 1000, (text[:20], out and out["ms"])
        assert time.monotonic() - started < 10


def test_a_heading_full_of_spaces_does_not_freeze_the_page() -> None:
    out = render("# a" + " " * 4000 + "b", limit_s=5)
    assert out is not None and out["ms"] < 500


def test_a_1mb_answer_of_inline_spans_does_not_freeze_the_page() -> None:
    out = render("`a` " * 250_000, limit_s=5)
    assert out is not None and out["ms"] < 1000
