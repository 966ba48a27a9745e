// Markdown for model answers, built from DOM nodes and text only: model output never becomes
// live HTML (no innerHTML anywhere), so an answer that contains markup shows it as text.
//
// Covers what chat answers use: paragraphs, headings, bold, italic, inline code, fenced code
// blocks (an unclosed fence while streaming is a code block to the end), bullet and numbered
// lists, block quotes, rules and links (http and https only, rel="noopener noreferrer").
// Bounded: past MAX_CHARS the rest is shown as plain text, inline nesting stops at a depth and
// a line's spans at a count; every pattern runs in time linear in its line (render() reruns on
// each animation frame while an answer streams, so a slow pattern would freeze the tab).
"use strict";

const darkbloomMarkdown = (() => {
  const MAX_CHARS = 200000;
  const MAX_DEPTH = 8;
  const MAX_SPANS = 2000;

  function node(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined) element.textContent = text;
    return element;
  }

  function safeUrl(text) {
    try {
      const url = new URL(text);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (_) {
      return null;
    }
  }

  // Inline spans in one pattern, scanned once from left to right (the earliest match wins, and
  // at one place the first alternative): code, link, strong, emphasis, bare URL. Groups:
  // 1 code; 2, 3 link text and target; 4, 5 strong; 6, 7 emphasis; a bare URL is the match.
  const INLINE = new RegExp([
    /`([^`\n]+)`/.source,
    /\[([^[\]\n]{1,500})\]\(([^)[\]\s]{1,2000})\)/.source,
    /\*\*([^*\n][^\n]*?)\*\*|__([^_\n][^\n]*?)__/.source,
    /\*([^*\s][^*\n]*?)\*|\b_([^_\s][^_\n]*?)_\b/.source,
    /https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/.source,
  ].join("|"), "g");

  function span(m, depth) {
    if (m[1] !== undefined) return node("code", "", m[1]);
    if (m[2] !== undefined) return link(m[2], m[3], depth);
    if (m[4] !== undefined || m[5] !== undefined) return wrap("strong", m[4] ?? m[5], depth);
    if (m[6] !== undefined || m[7] !== undefined) return wrap("em", m[6] ?? m[7], depth);
    return link(m[0], m[0], MAX_DEPTH);
  }

  function wrap(tag, text, depth) {
    const element = node(tag);
    inline(element, text, depth + 1);
    return element;
  }

  function link(text, href, depth) {
    const url = safeUrl(href);
    if (url === null) return document.createTextNode(`[${text}](${href})`);
    const a = node("a");
    a.href = url;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    inline(a, text, depth + 1);
    return a;
  }

  // Text with its inline spans, in one pass. INLINE is shared with the nested calls span()
  // makes, so its lastIndex is set before each search.
  function inline(parent, text, depth = 0) {
    let at = 0;
    for (let spans = 0; depth < MAX_DEPTH && spans < MAX_SPANS && at < text.length; spans++) {
      INLINE.lastIndex = at;
      const m = INLINE.exec(text);
      if (m === null) break;
      if (m.index > at) parent.append(document.createTextNode(text.slice(at, m.index)));
      at = m.index + m[0].length;
      parent.append(span(m, depth));
    }
    if (at < text.length) parent.append(document.createTextNode(text.slice(at)));
  }

  function codeBlock(lang, lines) {
    const pre = node("pre", "code-block");
    const code = node("code", "", lines.join("\n"));
    if (/^[A-Za-z0-9_+#.-]{1,32}$/.test(lang)) {
      code.className = `language-${lang}`;
      pre.dataset.lang = lang;
    }
    pre.append(code);
    return pre;
  }

  const FENCE = /^\s{0,3}(```|~~~)\s*([^\s`]*)/;
  // The `s` flag lets `.*$` take any rest of the line (a CR or U+2028 in it included), so a
  // failed match never backtracks through a long run of spaces.
  const HEADING = /^\s{0,3}(#{1,6})[ \t]+(.*)$/s;
  const BULLET = /^\s{0,3}[-*+]\s+(.*)$/s;
  const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/s;
  const QUOTE = /^\s{0,3}>\s?(.*)$/s;

  // A heading's text without its closing #s (only when a space or tab precedes them, as in
  // CommonMark) and trailing blanks; by hand, in linear time.
  function headingText(text) {
    let end = text.trimEnd().length;
    let hashes = end;
    while (hashes > 0 && text[hashes - 1] === "#") hashes--;
    if (hashes < end && (hashes === 0 || text[hashes - 1] === " " || text[hashes - 1] === "\t")) end = hashes;
    return text.slice(0, end).trimEnd();
  }
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;

  // Block structure, line by line; returns a DocumentFragment.
  function blocks(text, depth = 0) {
    const out = document.createDocumentFragment();
    const lines = text.split("\n");
    let paragraph = [];
    const flush = () => {
      if (paragraph.length) {
        const p = node("p");
        paragraph.forEach((line, k) => {
          if (k) p.append(document.createElement("br"));
          inline(p, line);
        });
        out.append(p);
      }
      paragraph = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        flush();
        const body = [];
        i++;
        while (i < lines.length && !new RegExp(`^\\s{0,3}${m[1]}\\s*$`).test(lines[i])) body.push(lines[i++]);
        out.append(codeBlock(m[2], body));
      } else if ((m = HEADING.exec(line))) {
        flush();
        // Answers sit under the page's h1 and the turn's heading: their "#" starts at h3.
        const h = node(`h${Math.min(6, m[1].length + 2)}`);
        inline(h, headingText(m[2]));
        out.append(h);
      } else if (RULE.test(line)) {
        flush();
        out.append(node("hr"));
      } else if (BULLET.test(line) || NUMBERED.test(line)) {
        flush();
        const numbered = !BULLET.test(line);
        const list = node(numbered ? "ol" : "ul");
        if (numbered) {
          const first = Number(NUMBERED.exec(line)[1]);
          if (first !== 1) list.start = first;
        }
        const re = numbered ? NUMBERED : BULLET;
        while (i < lines.length && re.test(lines[i])) {
          const item = node("li");
          const parts = re.exec(lines[i]);
          inline(item, numbered ? parts[2] : parts[1]);
          list.append(item);
          i++;
        }
        i--;
        out.append(list);
      } else if (QUOTE.test(line) && depth < 4) {
        flush();
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
        i--;
        const q = node("blockquote");
        q.append(blocks(quoted.join("\n"), depth + 1));
        out.append(q);
      } else if (line.trim() === "") {
        flush();
      } else {
        paragraph.push(line);
      }
    }
    flush();
    return out;
  }

  // Replace the container's content with the rendered text.
  function render(container, text) {
    const fragment = blocks(text.slice(0, MAX_CHARS));
    if (text.length > MAX_CHARS) fragment.append(node("p", "", text.slice(MAX_CHARS)));
    container.replaceChildren(fragment);
  }

  return { render, safeUrl };
})();
