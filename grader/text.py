"""Student-controlled text made harmless where it is shown: a terminal, markdown, a CSV cell.

Everything a submission brings (file and folder names, archive member names, what its
notebook prints, exception messages) may be written to attack whoever reads it: ANSI
escapes that clear a terminal or fake a progress line, bidi overrides that reverse what
is read, a `|` that breaks a markdown table, a cell starting with `=` that a spreadsheet
runs as a formula. Each function here makes text safe for one destination; apply it
where the text leaves the program, not earlier.
"""
from __future__ import annotations

import unicodedata

# Unicode categories never shown as themselves: control (C0, DEL, C1), format (bidi
# overrides and isolates, zero-width characters, marks such as U+200E/U+200F), lone
# surrogates (undecodable bytes of a file name), line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# A cell starting with one of these is run as a formula by Excel, LibreOffice or Google
# Sheets (OWASP "CSV injection"), including the full-width (and small) forms some accept.
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b")

# Characters with a meaning in (GitHub-flavoured) markdown inside a table cell, made
# literal with a backslash: emphasis, strike-through, links and images, math.
_MARKDOWN_ESCAPED = frozenset("\\*~[]()!$|")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;"}


def _visible(char: str) -> str:
    """The escape sequence that shows `char` instead of letting it act: \\x1b, \\u202e, \\U000e0041."""
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal(value: object, limit: int | None = None) -> str:
    """One line of text safe to print: every control, format or separator character (ESC,
    newline, C1, DEL, bidi overrides, lone surrogates) shown as a visible escape such as
    `\\x1b` or `\\n`, never interpreted. `limit`: at most that many characters are kept."""
    text = str(value)
    if not text.isprintable():
        text = "".join(_visible(c) if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in text)
    return text if limit is None else text[:limit]


def markdown_cell(value: object) -> str:
    """Text for one cell of a markdown table, shown literally: `terminal()` first, then `|`,
    HTML (`<`, `&`, quotes), backticks, emphasis, link and math characters made inert, and
    web addresses kept from becoming links."""
    text = terminal(value)
    out = []
    for i, char in enumerate(text):
        if char in _HTML:
            out.append(_HTML[char])
        elif char in _MARKDOWN_ESCAPED:
            out.append("\\" + char)
        elif char == "_" and not (0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()):
            out.append("\\_")  # between two letters or digits (snake_case) `_` never emphasises
        else:
            out.append(char)
    # GitHub turns bare http://, https:// and www. addresses into links: break the pattern.
    return "".join(out).replace("://", "\\://").replace("www.", "www\\.")


def csv_cell(value: object) -> str:
    """A text cell for a CSV file a TA opens in a spreadsheet: `terminal()` first, then a
    leading apostrophe if the text would start a formula (= + - @, tab, CR, or their
    full-width forms, after any leading white space). Numeric columns should not go through this."""
    text = terminal(value)
    return "'" + text if text.lstrip()[:1] in FORMULA_STARTS else text
