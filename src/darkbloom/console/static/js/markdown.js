// Markdown for model answers, built from DOM nodes and text only: model output never becomes
// live HTML (no innerHTML anywhere), so an answer that contains markup shows it as text.
//
// Covers what chat answers use: paragraphs, headings, bold, italic, inline code, fenced code
// blocks (an unclosed fence while streaming is a code block to the end), bullet and numbered
// lists, block quotes, rules and links (http and https only, rel="noopener noreferrer").
// Bounded: past MAX_CHARS the rest is shown as plain text, and inline nesting stops at a depth.
"use strict";

const darkbloomMarkdown = (() => {
  const MAX_CHARS = 200000;
  const MAX_DEPTH = 8;

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

  // Inline spans, earliest match first; text between matches stays text.
  const INLINE = [
    { re: /`([^`\n]+)`/, make: (m) => node("code", "", m[1]) },
    { re: /\[([^\]\n]{1,500})\]\(([^)\s]{1,2000})\)/, make: (m, depth) => link(m[1], m[2], depth) },
    { re: /\*\*([^*\n][^\n]*?)\*\*|__([^_\n][^\n]*?)__/, make: (m, depth) => wrap("strong", m[1] || m[2], depth) },
    { re: /\*([^*\s][^*\n]*?)\*|\b_([^_\s][^_\n]*?)_\b/, make: (m, depth) => wrap("em", m[1] || m[2], depth) },
    { re: /https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/, make: (m) => link(m[0], m[0], MAX_DEPTH) },
  ];

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

  function inline(parent, text, depth = 0) {
    let rest = text;
    while (rest) {
      let best = null;
      if (depth < MAX_DEPTH) {
        for (const rule of INLINE) {
          const m = rule.re.exec(rest);
          if (m && (best === null || m.index < best.m.index)) best = { rule, m };
        }
      }
      if (best === null) {
        parent.append(document.createTextNode(rest));
        return;
      }
      if (best.m.index > 0) parent.append(document.createTextNode(rest.slice(0, best.m.index)));
      parent.append(best.rule.make(best.m, depth));
      rest = rest.slice(best.m.index + best.m[0].length);
    }
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
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
  const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;
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
        inline(h, m[2]);
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
