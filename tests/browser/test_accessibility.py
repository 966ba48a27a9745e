"""Every page, signed out and signed in: text contrast meets WCAG AA, every field has a label and
every control a name, and the keyboard reaches every control with a visible focus ring."""

from __future__ import annotations

import pytest

from tests.browser.conftest import Ui

PUBLIC = ("/signin", "/signup", "/models", "/network", "/earn")
PRIVATE = ("/chat", "/keys", "/billing", "/providers", "/link")

AUDIT = """
() => {
  const problems = [];
  const rgba = (text) => {
    const m = text.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return [0, 0, 0, 0];
    const parts = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
  };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const backdrop = (el) => {
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const colour = rgba(getComputedStyle(node).backgroundColor);
      if (colour[3] > 0.5) return colour;
    }
    return [255, 255, 255, 1];
  };
  const visible = (el) => {
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    return style.visibility !== "hidden" && style.display !== "none" && box.width > 0 && box.height > 0;
  };
  const describe = (el) =>
    `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""} "${(el.textContent || "").trim().slice(0, 40)}"`;
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") || !visible(el) || el.closest("[disabled]")) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const style = getComputedStyle(el);
    const fg = luminance(rgba(style.color)), bg = luminance(backdrop(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) problems.push(`contrast ${ratio.toFixed(2)} < ${needed}: ${describe(el)}`);
  }
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden" || !visible(el)) continue;
    if (!el.labels?.length && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
      problems.push(`no label: ${describe(el)} name=${el.name}`);
  }
  for (const el of document.querySelectorAll("button, a[href], summary")) {
    if (!visible(el)) continue;
    const named = (el.textContent || "").trim() || el.getAttribute("aria-label")
      || el.getAttribute("aria-labelledby");
    if (!named) problems.push(`no name: ${describe(el)}`);
  }
  return problems;
}
"""

MARK = """
() => {
  const controls = [...document.querySelectorAll("a[href], button, input, select, textarea, summary")]
    .filter((el) => !el.disabled && el.type !== "hidden" && el.getAttribute("tabindex") !== "-1"
            && el.checkVisibility({visibilityProperty: true}));  // not in a closed <details>
  controls.forEach((el, i) => el.setAttribute("data-a11y", String(i)));
  return controls.length;
}
"""

FOCUSED = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const style = getComputedStyle(el);
  const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  return {id: el.getAttribute("data-a11y"), ring, tag: el.tagName,
          text: (el.textContent || "").trim().slice(0, 30)};
}
"""


def _audit(ui: Ui, path: str) -> list[str]:
    ui.goto(path)
    ui.page.wait_for_load_state("networkidle")
    problems: list[str] = [f"{path}: {p}" for p in ui.page.evaluate(AUDIT)]
    total = ui.page.evaluate(MARK)
    reached: set[str] = set()
    ui.page.locator("body").focus()
    for _ in range(total + 8):
        ui.page.keyboard.press("Tab")
        focused = ui.page.evaluate(FOCUSED)
        if focused is None:
            continue
        if not focused["ring"]:
            problems.append(f"{path}: no visible focus on {focused['tag']} {focused['text']!r}")
        if focused["id"] is not None:
            reached.add(focused["id"])
    if len(reached) < total:
        missed = ui.page.evaluate("""(reached) => [...document.querySelectorAll("[data-a11y]")]
            .filter((el) => !reached.includes(el.getAttribute("data-a11y")))
            .map((el) => `${el.tagName} "${(el.textContent || el.name || "").trim().slice(0, 30)}"`)""",
                                  sorted(reached))
        problems.append(f"{path}: not reachable with Tab: {', '.join(missed)}")
    return problems


@pytest.mark.parametrize("signed_in", [False, True], ids=["signed-out", "signed-in"])
def test_every_page_is_readable_labelled_and_keyboard_reachable(ui: Ui, signed_in: bool) -> None:
    if signed_in:
        ui.sign_up()
    problems: list[str] = []
    for path in PUBLIC + (PRIVATE if signed_in else ()):
        problems += _audit(ui, path)
    assert problems == [], "\n".join(problems)
