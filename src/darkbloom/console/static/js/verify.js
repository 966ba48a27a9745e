// Receipt verification in the browser (trust.md §5): the steps of client/verify.py's
// verify_receipt, with WebCrypto (ECDSA P-256, SHA-256), each step reported on its own.
//
// Exactness matters more than brevity here: what is signed is Python's canonical JSON
// (json.dumps sort_keys, separators (",", ":"), ensure_ascii), so this file reads JSON keeping
// each number's spelling and writes it back as Python would. The transcript rule (each data
// payload but [DONE], plus "\n") and the event forms are those of protocol/sse.py.
//
// Loaded by the chat page as a plain script (global `darkbloomVerify`) and by the unit tests
// under node (module.exports), so one copy of the rules is tested against Python's.
"use strict";

(function (root) {
  const RECEIPT_CONTEXT = "darkbloom/receipt/v2\n";
  const ATTESTATION_CONTEXT = "darkbloom/attestation/v2\n";
  const RECEIPT_COMMENT = ": darkbloom-receipt ";
  const DATA = "data: ";
  const DONE = "data: [DONE]";
  const MAX_BLOB_B64 = Math.floor((16 * 1024 * 4) / 3) + 4;
  const MAX_SIGNATURE = 200;
  const MAX_DEPTH = 256;
  const encoder = new TextEncoder();

  // --- JSON as Python reads it -------------------------------------------------------------

  // A number with its spelling kept: "2" is an int, "2.0" a float, as for json.loads.
  class Num {
    constructor(text) {
      this.text = text;
      this.isInt = /^-?\d+$/.test(text);
    }
    bigint() { return BigInt(this.text); }
  }

  class JsonError extends Error {}

  // Strict JSON (RFC 8259) plus the NaN/Infinity Python accepts. Objects become Maps (a later
  // duplicate key wins, as in a dict); numbers become Num.
  function parseJson(text) {
    let i = 0;
    const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
    const fail = (why) => { throw new JsonError(`${why} at ${i}`); };

    function value(depth) {
      if (depth > MAX_DEPTH) fail("too deep");
      ws();
      const c = text[i];
      if (c === "{") return object(depth);
      if (c === "[") return array(depth);
      if (c === '"') return string();
      for (const [word, v] of [["null", null], ["true", true], ["false", false],
        ["NaN", new Num("NaN")], ["Infinity", new Num("Infinity")],
        ["-Infinity", new Num("-Infinity")]]) {
        if (text.startsWith(word, i)) { i += word.length; return v; }
      }
      const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
      if (!m) fail("unexpected character");
      i += m[0].length;
      return new Num(m[0]);
    }

    function object(depth) {
      const map = new Map();
      i++;
      ws();
      if (text[i] === "}") { i++; return map; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = string();
        ws();
        if (text[i++] !== ":") fail("expected ':'");
        map.set(key, value(depth + 1));
        ws();
        const c = text[i++];
        if (c === "}") return map;
        if (c !== ",") fail("expected ',' or '}'");
      }
    }

    function array(depth) {
      const list = [];
      i++;
      ws();
      if (text[i] === "]") { i++; return list; }
      for (;;) {
        list.push(value(depth + 1));
        ws();
        const c = text[i++];
        if (c === "]") return list;
        if (c !== ",") fail("expected ',' or ']'");
      }
    }

    function string() {
      i++;
      let out = "";
      for (;;) {
        if (i >= text.length) fail("unterminated string");
        const c = text[i++];
        if (c === '"') return out;
        if (c < " ") fail("control character in string");
        if (c !== "\\") { out += c; continue; }
        const e = text[i++];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) out += simple[e];
        else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i, i + 4))) {
          out += String.fromCharCode(parseInt(text.slice(i, i + 4), 16));
          i += 4;
        } else fail("bad escape");
      }
    }

    const result = value(0);
    ws();
    if (i !== text.length) fail("extra data");
    return result;
  }

  // --- canonical JSON, byte for byte as Python writes it ------------------------------------

  function pyString(s) {
    let out = '"';
    for (let k = 0; k < s.length; k++) {
      const c = s[k];
      const code = s.charCodeAt(k);
      if (c === '"') out += '\\"';
      else if (c === "\\") out += "\\\\";
      else if (c === "\n") out += "\\n";
      else if (c === "\r") out += "\\r";
      else if (c === "\t") out += "\\t";
      else if (c === "\b") out += "\\b";
      else if (c === "\f") out += "\\f";
      else if (code < 0x20 || code > 0x7e) out += "\\u" + code.toString(16).padStart(4, "0");
      else out += c;
    }
    return out + '"';
  }

  // Python's repr(float): shortest round-trip digits, fixed notation for exponents -4..15.
  function pyFloat(x) {
    if (Number.isNaN(x)) return "NaN";
    if (x === Infinity) return "Infinity";
    if (x === -Infinity) return "-Infinity";
    if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
    const [mantissa, expText] = x.toExponential().split("e");
    const exp = Number(expText);
    const sign = mantissa.startsWith("-") ? "-" : "";
    const digits = mantissa.replace("-", "").replace(".", "");
    if (exp >= -4 && exp < 16) {
      if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
      const whole = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
      return `${sign}${whole}.${digits.slice(exp + 1) || "0"}`;
    }
    const rest = digits.length > 1 ? "." + digits.slice(1) : "";
    return `${sign}${digits[0]}${rest}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }

  // Python sorts keys by code point; JavaScript's default sort is by UTF-16 unit.
  function byCodePoint(a, b) {
    const x = Array.from(a, (c) => c.codePointAt(0));
    const y = Array.from(b, (c) => c.codePointAt(0));
    for (let k = 0; k < Math.min(x.length, y.length); k++) {
      if (x[k] !== y[k]) return x[k] - y[k];
    }
    return x.length - y.length;
  }

  function canonicalJson(v) {
    if (v === null) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "string") return pyString(v);
    if (v instanceof Num) return v.isInt ? v.bigint().toString() : pyFloat(Number(v.text));
    if (typeof v === "number") return Number.isInteger(v) ? BigInt(v).toString() : pyFloat(v);
    if (typeof v === "bigint") return v.toString();
    if (Array.isArray(v)) return "[" + v.map(canonicalJson).join(",") + "]";
    const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
    entries.sort((a, b) => byCodePoint(a[0], b[0]));
    return "{" + entries.map(([k, x]) => pyString(k) + ":" + canonicalJson(x)).join(",") + "}";
  }

  // --- bytes, base64, keys and signatures ---------------------------------------------------

  // base64.b64decode(s, validate=True): the alphabet only, padded; null when not base64.
  function b64decode(s) {
    if (typeof s !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return null;
    try {
      return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
    } catch (_) {
      return null;
    }
  }

  function b64encode(bytes) {
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function equalBytes(a, b) {
    return a.length === b.length && a.every((x, k) => x === b[k]);
  }

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function subtle() {
    const found = root.crypto && root.crypto.subtle;
    if (!found) {
      throw new Error("this browser offers WebCrypto only on HTTPS or localhost pages");
    }
    return found;
  }

  async function sha256Hex(bytes) {
    return hex(await subtle().digest("SHA-256", bytes));
  }

  // A P-256 public key from raw X||Y base64 (or the 65-byte 04-prefixed form), or null.
  async function importKey(text) {
    if (typeof text !== "string" || text.length > 128) return null;
    let raw = b64decode(text);
    if (raw === null) return null;
    if (raw.length === 64) raw = concat(new Uint8Array([4]), raw);
    if (raw.length !== 65 || raw[0] !== 4) return null;
    try {
      return await subtle().importKey("raw", raw, { name: "ECDSA", namedCurve: "P-256" }, false,
        ["verify"]);
    } catch (_) {
      return null;
    }
  }

  // signing.is_canonical_key: a point on the curve, spelt as canonical base64 of raw X||Y.
  async function isCanonicalKey(text) {
    const raw = b64decode(text);
    return raw !== null && raw.length === 64 && b64encode(raw) === text &&
      (await importKey(text)) !== null;
  }

  // A DER ECDSA signature (SEQUENCE of two INTEGERs) as the 64-byte r||s WebCrypto reads.
  function derToRaw(der) {
    if (der.length < 8 || der[0] !== 0x30 || der[1] !== der.length - 2) return null;
    const out = new Uint8Array(64);
    let i = 2;
    for (let k = 0; k < 2; k++) {
      if (der[i] !== 0x02) return null;
      const n = der[i + 1];
      i += 2;
      if (!n || n > 33 || i + n > der.length) return null;
      let int = der.subarray(i, i + n);
      i += n;
      if (int[0] & 0x80) return null;
      if (int.length > 1 && int[0] === 0 && !(int[1] & 0x80)) return null;
      if (int[0] === 0 && int.length > 1) int = int.subarray(1);
      if (int.length > 32) return null;
      out.set(int, k * 32 + 32 - int.length);
    }
    return i === der.length ? out : null;
  }

  // signing.verify: a valid signature (base64 DER) by the key over the context-scoped bytes.
  async function verifySignature(keyText, data, signatureText) {
    if (typeof signatureText !== "string" || signatureText.length > MAX_SIGNATURE) return false;
    const key = await importKey(keyText);
    const der = b64decode(signatureText);
    const raw = der && derToRaw(der);
    if (!key || !raw) return false;
    return subtle().verify({ name: "ECDSA", hash: "SHA-256" }, key, raw, data);
  }

  // --- the stream: events, their forms and the transcript -----------------------------------

  // Splits an SSE body into events at blank lines (as protocol/sse.split_stream does), keeping
  // the bytes exact: push() bytes as they come, then end(). Returns event texts. Decoded as
  // `darkbloom verify` decodes a saved stream (bytes.decode("utf-8", "replace")): a byte order
  // mark stays a character (it is not the start of an SSE line, so such an event fails the
  // forms check, as in Python) and invalid bytes become U+FFFD.
  class SseReader {
    constructor() {
      this.buffer = new Uint8Array(0);
      this.decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    }

    push(chunk) {
      this.buffer = concat(this.buffer, chunk);
      const events = [];
      let start = 0;
      for (let k = 0; k + 1 < this.buffer.length; k++) {
        if (this.buffer[k] === 10 && this.buffer[k + 1] === 10) {
          if (k > start) events.push(this.decoder.decode(this.buffer.subarray(start, k)));
          k += 1;
          while (k + 1 < this.buffer.length && this.buffer[k + 1] === 10) k += 1;
          start = k + 1;
        }
      }
      while (start < this.buffer.length && this.buffer[start] === 10) start += 1;
      this.buffer = this.buffer.slice(start);
      return events;
    }

    end() {
      let stop = this.buffer.length;
      while (stop > 0 && this.buffer[stop - 1] === 10) stop -= 1;
      const rest = this.buffer.subarray(0, stop);
      this.buffer = new Uint8Array(0);
      return rest.length ? [this.decoder.decode(rest)] : [];
    }
  }

  function dataOf(event) {
    for (const line of event.split("\n")) {
      if (line.startsWith(DATA)) return line.slice(DATA.length);
    }
    return null;
  }

  function inTranscript(event) {
    return event !== DONE && !event.startsWith(":");
  }

  // What one streamed event adds to the hashed transcript (empty for [DONE] and comments).
  function transcriptPart(event) {
    if (!inTranscript(event)) return new Uint8Array(0);
    return encoder.encode((dataOf(event) || "") + "\n");
  }

  function receiptTextOf(event) {
    return event.startsWith(RECEIPT_COMMENT) ? event.slice(RECEIPT_COMMENT.length) : null;
  }

  // sse.event_problem: why an event is outside the forms the provider makes, or null.
  function eventProblem(event) {
    if (event.includes("\r")) return "a carriage return (an SSE line end)";
    const lines = event.split("\n");
    if (lines.length === 1 && event.startsWith(":")) return null;
    const named = lines.length === 2 ? /^event: ([A-Za-z0-9_.]{1,64})$/.exec(lines[0]) : null;
    if (lines.length > 2 || (lines.length === 2 && named === null) ||
        !lines[lines.length - 1].startsWith(DATA)) {
      return "an event with other lines than `event: NAME` and one data line";
    }
    let data = null;
    try { data = parseJson(lines[lines.length - 1].slice(DATA.length)); } catch (_) { data = null; }
    const type = data instanceof Map ? data.get("type") : undefined;
    const kind = type === undefined ? null : type;
    if ((named ? named[1] : null) !== kind) return "an event name its data does not repeat";
    return null;
  }

  // --- the receipt -------------------------------------------------------------------------

  // A lone UTF-16 surrogate (from a \ud800 escape) is no Unicode text: pydantic's str refuses
  // it, so a receipt or blob field holding one is refused here too.
  const wellFormed = (s) => !/\p{Cs}/u.test(s);
  const SHORT = (v, nullable) => (nullable && v === null) ||
    (typeof v === "string" && wellFormed(v) && Array.from(v).length <= 256);
  const HEX64 = (v) => typeof v === "string" && /^[0-9a-f]{64}$/.test(v);
  const INT = (max) => (v) => v instanceof Num && v.isInt && v.bigint() >= 0n && v.bigint() <= max;
  // A Map, not an object: a field named "constructor" or "__proto__" is an unknown field.
  const RECEIPT_FIELDS = new Map(Object.entries({
    v: (v) => v instanceof Num && v.isInt && v.bigint() === 2n,
    request_id: (v) => SHORT(v), model: (v) => SHORT(v), endpoint: (v) => SHORT(v),
    provider_key: (v) => SHORT(v), encryption_key: (v) => SHORT(v),
    weight_hash: (v) => SHORT(v, true), quantization: (v) => SHORT(v, true),
    request_sha256: HEX64, response_sha256: HEX64,
    prompt_tokens: INT(2n ** 31n - 1n), completion_tokens: INT(2n ** 31n - 1n),
    created: INT(2n ** 40n),
  }));

  // SignedReceipt.parse: the comment's JSON as a v2 receipt and its signature, or null. The
  // receipt comes back as a Map of every field (v included), ready for canonicalJson.
  function parseSignedReceipt(text) {
    let top;
    try { top = parseJson(text); } catch (_) { return null; }
    if (!(top instanceof Map) || top.size !== 2 || !top.has("receipt") || !top.has("signature")) {
      return null;
    }
    const body = top.get("receipt");
    const signature = top.get("signature");
    if (!(body instanceof Map) || typeof signature !== "string" ||
        !/^[A-Za-z0-9+/=]{1,200}$/.test(signature)) return null;
    const receipt = new Map([["v", new Num("2")]]);
    for (const [key, value] of body) {
      const valid = RECEIPT_FIELDS.get(key);
      if (valid === undefined || !valid(value)) return null;
      receipt.set(key, value);
    }
    if ([...RECEIPT_FIELDS.keys()].some((key) => !receipt.has(key))) return null;
    return { receipt, signature };
  }

  // --- the attestation blob (protocol/trust.open_attestation, AttestationBlob) ------------

  class InvalidAttestation extends Error {}

  const OPTIONAL_SHORT = (v) => v === undefined || SHORT(v, true);
  const OPTIONAL_BOOL = (v) => v === undefined || v === null || typeof v === "boolean";
  const BLOB_FIELDS = {
    publicKey: (v) => SHORT(v),
    encryptionPublicKey: OPTIONAL_SHORT,
    timestamp: (v) => v === undefined || SHORT(v),
    serialNumber: OPTIONAL_SHORT, platform: OPTIONAL_SHORT, kernelLockdown: OPTIONAL_SHORT,
    coreDumpsDisabled: OPTIONAL_BOOL, secureBootEnabled: OPTIONAL_BOOL,
    ptraceScope: (v) => v === undefined || v === null || (v instanceof Num && v.isInt),
  };

  async function openAttestation(rawB64, signature) {
    if (typeof rawB64 !== "string" || typeof signature !== "string") {
      throw new InvalidAttestation("attestation_raw and signature are required");
    }
    if (rawB64.length > MAX_BLOB_B64 || signature.length > MAX_SIGNATURE) {
      throw new InvalidAttestation("attestation blob too large");
    }
    const raw = b64decode(rawB64);
    let blob = null;
    try {
      blob = raw && parseJson(new TextDecoder("utf-8", { fatal: true }).decode(raw));
    } catch (_) {
      blob = null;
    }
    // As AttestationBlob: typed known fields, and keys that are Unicode text (unknown fields'
    // values are kept as they are).
    const typed = blob instanceof Map && [...blob.keys()].every(wellFormed) &&
      Object.entries(BLOB_FIELDS).every(([key, ok]) => ok(blob.get(key)));
    if (!typed) throw new InvalidAttestation("attestation blob is not base64 JSON with a publicKey");
    if (!equalBytes(encoder.encode(canonicalJson(blob)), raw)) {
      throw new InvalidAttestation("attestation blob is not canonical JSON");
    }
    const publicKey = blob.get("publicKey");
    if (!(await isCanonicalKey(publicKey))) {
      throw new InvalidAttestation("attestation publicKey is not a raw P-256 key in canonical base64");
    }
    if (!(await verifySignature(publicKey, concat(encoder.encode(ATTESTATION_CONTEXT), raw), signature))) {
      throw new InvalidAttestation("attestation signature does not verify");
    }
    return blob;
  }

  // --- the steps ---------------------------------------------------------------------------

  // The "model" of a request body (bytes), or null when the body names none.
  function modelAsked(body) {
    let parsed = null;
    try { parsed = parseJson(new TextDecoder("utf-8").decode(body)); } catch (_) { parsed = null; }
    const model = parsed instanceof Map ? parsed.get("model") : undefined;
    return typeof model === "string" ? model : null;
  }

  const short = (text) => (text.length > 40 ? `${text.slice(0, 40)}…` : text);

  // verify_receipt's checks, in its order, for a streamed answer:
  //   receiptText: the JSON after ": darkbloom-receipt " (null when the stream had none);
  //   transcript: the exact transcript bytes; events: every event text, for the forms check;
  //   providers: GET /v1/providers/attestation's "providers";
  //   requestBody: optional, the exact bytes the page sent: checked against request_sha256
  //     (the coordinator relays the body byte for byte), which ties the answer to this question,
  //     and then the receipt's model must be the one the body asked for;
  //   catalog: optional {model id: weight hash} (an object or a Map) to compare the receipt's
  //     weights with those of the model asked for (the receipt's own, without a body).
  // Returns [{name, ok, detail}]; ok is true, false, or null for a check that could not run.
  async function verifyStream({ receiptText, transcript, events = [], providers = [], requestBody = null,
    catalog = null }) {
    const steps = [];
    const step = (name, ok, detail = "") => steps.push({ name, ok, detail });
    const problem = events.map(eventProblem).find((p) => p !== null) || null;
    step("stream holds only events the receipt covers", problem === null,
      problem ? `the stream holds ${problem}` : "");
    const signed = receiptText === null ? null : parseSignedReceipt(receiptText);
    step("receipt is a well-formed v2 receipt", signed !== null,
      receiptText === null ? "the stream carried no receipt" : "");
    if (signed === null) return steps;
    const receipt = signed.receipt;
    const key = receipt.get("provider_key");

    // The listing is the coordinator's: its trust level and chip name are claims this page does
    // not check (no certificate chain here), so a passed step does not repeat them.
    const entry = Array.isArray(providers)
      ? providers.find((p) => p && typeof p === "object" && p.identity_public_key === key) : undefined;
    step("provider is in the attestation listing", entry !== undefined,
      entry ? "" : `no provider with identity key ${key.slice(0, 64)}`);
    if (entry !== undefined) {
      let detail = "";
      try {
        const blob = await openAttestation(entry.attestation_raw, entry.attestation_signature);
        if (blob.get("publicKey") !== entry.identity_public_key) {
          throw new InvalidAttestation("the blob is for another identity key");
        }
        const bound = blob.has("encryptionPublicKey") ? blob.get("encryptionPublicKey") : null;
        if (bound !== receipt.get("encryption_key")) {
          throw new InvalidAttestation("the blob does not bind the receipt's encryption key");
        }
      } catch (exc) {
        if (!(exc instanceof InvalidAttestation)) throw exc;
        detail = `${exc.message} (the provider may have restarted: new per-process X25519 key)`;
      }
      step("attestation blob is signed by that identity key and binds the receipt's encryption key",
        detail === "", detail);
    }

    const digest = await sha256Hex(transcript);
    step("response hash matches the bytes received", digest === receipt.get("response_sha256"),
      `sha256 ${digest}`);
    if (requestBody !== null) {
      const sent = await sha256Hex(requestBody);
      step("request hash matches the body sent", sent === receipt.get("request_sha256"),
        sent === receipt.get("request_sha256") ? ""
          : "the provider answered another request than this page sent");
    }
    const message = concat(encoder.encode(RECEIPT_CONTEXT), encoder.encode(canonicalJson(receipt)));
    step("receipt signature is valid", await verifySignature(key, message, signed.signature));

    const served = receipt.get("model");
    let model = served;
    if (requestBody !== null) {
      model = modelAsked(requestBody);
      step("model is the one asked for", model === served,
        model === served ? short(served) : `receipt ${short(served)}, asked for ${short(String(model))}`);
    }
    if (catalog) {
      const listed = catalog instanceof Map ? catalog.get(model)
        : Object.prototype.hasOwnProperty.call(catalog, model) ? catalog[model] : undefined;
      const weights = receipt.get("weight_hash");
      const name = "weights are the catalog's for this model";
      if (typeof listed !== "string" || listed === "") {
        step(name, null, `the catalog lists no weights for ${short(String(model))}`);
      } else {
        step(name, weights === listed,
          weights === listed ? `${short(String(model))} · ${String(weights).slice(0, 16)}…`
            : `receipt ${String(weights).slice(0, 16)}…, catalog ${listed.slice(0, 16)}…`);
      }
    }
    return steps;
  }

  const api = {
    Num, JsonError, parseJson, canonicalJson, pyFloat, b64decode, b64encode, derToRaw, concat,
    verifySignature, isCanonicalKey, SseReader, dataOf, transcriptPart, receiptTextOf, eventProblem,
    parseSignedReceipt, openAttestation, InvalidAttestation, verifyStream, sha256Hex, modelAsked,
  };
  root.darkbloomVerify = api;
  if (typeof module === "object" && module.exports) module.exports = api;
})(globalThis);
