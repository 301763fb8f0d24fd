"""Make a graded notebook inert for every renderer: the feedback page, formgrader, Jupyter.

Everything a student's notebook shows was written by the student: HTML, JavaScript, SVG and
the markdown of the written answers. The feedback page runs it in the student's browser;
formgrader runs it in the TA's, logged in to Jupyter (a script there could open a terminal).
SanitizeNotebook rewrites the autograded notebook so that nothing in it can run, whatever
renders it, once nbgrader has run and scored it:

- outputs: text/plain, application/json and raster images are kept as they are; text/html
  keeps an allow-list of tags and attributes (bleach: no script, style, iframe, object, embed
  or form, no on* attribute, no javascript: or data: URL except PNG, JPEG or GIF images);
  text/markdown is treated as a markdown cell; image/svg+xml is rebuilt from an allow-list of
  drawing elements and attributes (the standard XML parser), or replaced by a small SVG that
  says it was removed; every other type (JavaScript, widget views, PDF, vendor types) is
  dropped, with a text/plain note when nothing else is left to show. Output metadata keeps
  only the display hints renderers read (a width is a number), execution counts are integers.
- markdown and raw cells: every `<` that would start a tag other than an allowed one with
  allowed attributes gets a zero-width space after it (the tag then shows as text), and so
  does the colon of every javascript:, vbscript: or non-image data: URL, however it is
  encoded. The text the student wrote reads exactly the same, in every renderer, code spans
  and formulas included.
- notebook metadata: the widget state is dropped.

Never touched: code cell sources, stream and error outputs, cell metadata (nbgrader's and the
grader's), the image data. So nothing nbgrader or the grader's verification reads changes:
each output keeps its image types, errors stay errors. autograde_preprocessors() puts the
preprocessor after nbgrader has scored the notebook; nbgrader_config.py runs it again in
every HTML export (formgrader's pages, generate_feedback), and selects a feedback template
whose page carries CSP, a Content-Security-Policy that forbids every script. protect_page()
adds that policy to a page written without the template.

bleach is used for HTML outputs: it parses like a browser (html5lib) and rebuilds the HTML
from its allow-list. nbconvert's own SanitizeHTML preprocessor uses bleach too, but with
bleach's tiny defaults (tables and images are escaped into text), it drops SVG figures
outright, and it runs bleach on the whole markdown source, which rewrites `<`, `>` and `&`
as entities: blockquotes break and code spans show `&lt;`. Markdown is text that a renderer
turns into HTML later, so here its HTML is made inert in place instead.
"""
from __future__ import annotations

import bisect
import html
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import tinycss2
from bleach import html5lib_shim
from bleach.sanitizer import Cleaner
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

ZWSP = "\u200b"  # zero-width space: invisible, and no tag, URL scheme or entity can contain it

# The policy of every feedback page: nothing runs, nothing loads from anywhere; inline styles,
# embedded images and fonts only. A <meta> policy cannot say frame-ancestors: not needed here.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
       "base-uri 'none'; form-action 'none'")
CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'

# ----------------------------------------------------------------------------- the policy

TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "code", "col", "colgroup", "dd", "del",
    "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u",
    "ul", "var"})
# Elements removed from HTML outputs together with everything inside them (a table's <style>
# would otherwise show as text); any other element that is not allowed loses its tags only.
DROPPED = frozenset({"script", "style", "template", "iframe", "frame", "frameset", "object", "embed",
                     "applet", "noscript", "noembed", "noframes", "textarea", "title", "xmp", "svg", "math",
                     "select", "head", "plaintext"})

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NUMBER = re.compile(r"\s*\d{1,5}(?:\.\d{1,4})?(?:%|px)?\s*")
_ALIGN = {"left", "right", "center", "justify", "top", "middle", "bottom", "baseline"}
_ENUMS = {"align": _ALIGN, "valign": _ALIGN, "dir": {"ltr", "rtl", "auto"}, "target": {"_blank"},
          "type": {"1", "a", "i"}}
_GLOBAL = {"title", "style", "align", "dir", "lang"}
_ATTRIBUTES = {
    "a": {"href", "target", "rel"}, "img": {"src", "alt", "width", "height"},
    "table": {"border", "cellpadding", "cellspacing", "width"}, "td": {"colspan", "rowspan", "valign", "width"},
    "th": {"colspan", "rowspan", "valign", "width", "scope"}, "col": {"span", "width"}, "colgroup": {"span", "width"},
    "ol": {"start", "type", "reversed"}, "li": {"value"}, "details": {"open"},
}
_NUMERIC = {"width", "height", "border", "cellpadding", "cellspacing", "colspan", "rowspan", "span", "start", "value"}
_IMAGE_DATA = re.compile(r"data:image/(?:png|jpeg|jpg|gif)[;,]")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")

_URL_JUNK = re.compile(r"[\t\n\r]")
_URL_ENDS = "".join(map(chr, range(0x21)))


def _url(value: str) -> str:
    """A URL as a browser reads it: entities decoded, tabs and newlines removed anywhere, spaces
    and control characters removed at both ends, ASCII letters in lower case."""
    return _URL_JUNK.sub("", html.unescape(value)).strip(_URL_ENDS).translate(_ASCII_LOWER)


def link_ok(value: str) -> bool:
    """An <a href> that may stay: http, https, mailto, or a place in the page."""
    url = _url(value)
    scheme = _SCHEME.match(url)
    return url.startswith("#") or bool(scheme and scheme.group(1) in ("http", "https", "mailto"))


def image_ok(value: str) -> bool:
    """An <img src> that may stay: an embedded PNG, JPEG or GIF, a cell attachment, or http(s)."""
    url = _url(value)
    scheme = _SCHEME.match(url)
    return bool(_IMAGE_DATA.match(url) or (scheme and scheme.group(1) in ("http", "https", "attachment")))


def attribute_ok(tag: str, name: str, value: str) -> bool:
    """Whether an HTML attribute may stay (its value as written, entities not yet decoded).
    `style` is allowed here; its content is then reduced by sanitize_css()."""
    tag, name = tag.lower(), name.lower()
    if name not in _GLOBAL and name not in _ATTRIBUTES.get(tag, ()):
        return False
    text = html.unescape(value or "")
    if name == "href":
        return link_ok(text)
    if name == "src":
        return image_ok(text)
    if name in _NUMERIC:
        return bool(_NUMBER.fullmatch(text))
    if name in _ENUMS:
        return text.strip().lower() in _ENUMS[name]
    if name == "rel":
        return set(text.lower().split()) <= {"noopener", "noreferrer", "nofollow"}
    if name == "lang":
        return bool(re.fullmatch(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*", text))
    return True  # title, alt, scope, open, reversed, style: text only


# ----------------------------------------------------------------------------- CSS

_CSS_PROPERTIES = frozenset({
    "color", "background-color", "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-collapse", "border-spacing", "font-family",
    "font-size", "font-style", "font-variant", "font-weight", "letter-spacing", "line-height", "text-align",
    "text-decoration", "text-indent", "text-transform", "vertical-align", "white-space", "word-wrap",
    "width", "height", "max-width", "min-width", "padding", "padding-top", "padding-right", "padding-bottom",
    "padding-left", "display", "visibility", "opacity",
    # SVG
    "fill", "fill-opacity", "fill-rule", "stroke", "stroke-width", "stroke-linecap", "stroke-linejoin",
    "stroke-miterlimit", "stroke-dasharray", "stroke-dashoffset", "stroke-opacity", "clip-path", "clip-rule",
    "stop-color", "stop-opacity", "text-anchor", "dominant-baseline", "alignment-baseline", "baseline-shift",
    "marker-start", "marker-mid", "marker-end", "mask", "shape-rendering", "text-rendering", "vector-effect"})
_CSS_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla", "calc", "url"})
_LOCAL_REF = re.compile(r"#[A-Za-z0-9_.:-]+")


def _css_value_ok(tokens) -> bool:
    """No URL other than a reference in the same drawing (url(#clip1)), no function other than
    colours and calc(): nothing a browser would fetch or evaluate."""
    for token in tokens:
        if token.type == "url" and not _LOCAL_REF.fullmatch(token.value):
            return False
        if token.type == "function":
            if token.lower_name not in _CSS_FUNCTIONS:
                return False
            if token.lower_name == "url":
                args = [t for t in token.arguments if t.type not in ("whitespace", "comment")]
                if len(args) != 1 or args[0].type != "string" or not _LOCAL_REF.fullmatch(args[0].value):
                    return False
            elif not _css_value_ok(token.arguments):
                return False
        if token.type in ("() block", "[] block", "{} block") and not _css_value_ok(token.content):
            return False
        if token.type == "at-keyword":
            return False
    return True


def _css(style: str) -> tuple[list[str], int]:
    """(the declarations of an inline style that may stay, written back; how many may not)."""
    kept, dropped = [], 0
    for item in tinycss2.parse_declaration_list(style, skip_comments=True, skip_whitespace=True):
        value = tinycss2.serialize(item.value).strip() if item.type == "declaration" else ""
        if value and item.lower_name in _CSS_PROPERTIES and _css_value_ok(item.value):
            kept.append(f"{item.lower_name}: {value}{' !important' if item.important else ''}")
        else:
            dropped += 1
    return kept, dropped


def sanitize_css(style: str) -> str:
    """An inline style reduced to allowed properties with harmless values ("" when nothing is left)."""
    return "; ".join(_css(style)[0])


class _CSSSanitizer:
    """bleach's interface to sanitize_css (what bleach.css_sanitizer.CSSSanitizer offers, stricter)."""

    def sanitize_css(self, style: str) -> str:
        return sanitize_css(style)


# ----------------------------------------------------------------------------- URLs in text

# What a renderer decodes before it reads a URL: entities, markdown backslash escapes, and the
# tabs and newlines a URL parser drops anywhere.
_SPECIAL = re.compile(r"&#[0-9]{1,8};?|&#[xX][0-9a-fA-F]{1,7};?|&[A-Za-z][A-Za-z0-9]{0,31};?"
                      r"|\\[!-/:-@\[-`{-~]|[\t\n\r]")
_BAD_SCHEME = re.compile(r"(?:java|vb)script:|data:(?![ \t\n\r\f]|$|image/(?:png|jpeg|jpg|gif)[;,])")


def neutralize_schemes(text: str) -> str:
    """Put a zero-width space before the colon of every javascript:, vbscript: or data: URL
    scheme (data: images excepted) in text, however it is written (entities, backslash escapes,
    tabs and newlines inside, any case), so that no link, image, raw HTML attribute or formula
    (MathJax's \\href) made from it can be one. The text reads the same."""
    pieces, starts, origins, plain = [], [], [], []  # the decoded text, in pieces mapped back to text
    length = 0

    def add(value: str, origin: int, verbatim: bool) -> None:
        nonlocal length
        if value:
            pieces.append(value.translate(_ASCII_LOWER))
            starts.append(length)
            origins.append(origin)
            plain.append(verbatim)
            length += len(value)

    position = 0
    for unit in _SPECIAL.finditer(text):
        add(text[position:unit.start()], position, True)
        raw = unit.group(0)
        value = html.unescape(raw) if raw[0] == "&" else raw[1] if raw[0] == "\\" else ""
        add("" if value in ("\t", "\n", "\r") else value, unit.start(), False)
        position = unit.end()
    add(text[position:], position, True)
    skeleton = "".join(pieces)
    cuts = set()
    for match in _BAD_SCHEME.finditer(skeleton):
        colon = match.end() - 1
        i = bisect.bisect_right(starts, colon) - 1
        cuts.add(origins[i] + (colon - starts[i] if plain[i] else 0))
    for cut in sorted(cuts, reverse=True):
        text = text[:cut] + ZWSP + text[cut:]
    return text


# ----------------------------------------------------------------------------- markdown

_WS = r"[ \t\n\r\f]"
# CommonMark's open and closing tags: a browser reads each of them the same way
_NAME = r"[A-Za-z_:][A-Za-z0-9_.:-]*"
_VALUE = r"\"[^\"]*\"|'[^']*'|[^ \t\n\r\f\"'=<>`]+"
_ATTR = re.compile(rf"{_WS}+({_NAME})(?:{_WS}*={_WS}*({_VALUE}))?")
_OPEN_TAG = re.compile(rf"<([A-Za-z][A-Za-z0-9-]*)((?:{_WS}+{_NAME}(?:{_WS}*={_WS}*(?:{_VALUE}))?)*)({_WS}*/?)>")
_CLOSE_TAG = re.compile(rf"</([A-Za-z][A-Za-z0-9-]*){_WS}*>")
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_LONGEST_TAG = 1 << 16


def _comment_end(text: str, start: int) -> int | None:
    """End of the HTML comment at start, if it is one that may stay: as a browser reads it (up
    to the first --> or --!>), and with no `<` inside, so that keeping it hides no tag."""
    if not text.startswith("<!--", start) or text.startswith((">", "->"), start + 4):
        return None
    ends = [i for i in (text.find("-->", start + 4), text.find("--!>", start + 4)) if i >= 0]
    if not ends:
        return None
    end = min(ends)
    if "<" in text[start + 4:end]:
        return None
    return end + (3 if text.startswith("-->", end) else 4)


def _allowed_tag(match: re.Match) -> str | None:
    """The start tag, if it may stay whole: an allowed tag whose every attribute is allowed (a
    style already reduced to harmless properties), else None. Written back with its values
    escaped and double-quoted, unless they already are and hold no `&`, `<` or `>` (then the
    original text stays, which every parser reads the same way)."""
    name, attributes, ending = match.group(1), match.group(2), match.group(3)
    if name.lower() not in TAGS:
        return None
    kept, seen, verbatim = [], set(), True
    for attr in _ATTR.finditer(attributes):
        key, raw = attr.group(1), attr.group(2)
        written = "" if raw is None else raw[1:-1] if raw[:1] in "\"'" else raw
        if key.lower() in seen or not attribute_ok(name, key, written):
            return None
        seen.add(key.lower())
        if raw is None:  # no value: <details open>
            kept.append(key)
            continue
        value = html.unescape(written)
        if key.lower() == "style":
            declarations, dropped = _css(value)
            if dropped:
                return None
            verbatim = verbatim and "; ".join(declarations) == value
            value = "; ".join(declarations)
        verbatim = verbatim and raw.startswith('"') and not any(c in raw for c in "&<>")
        kept.append(f'{key}="{html.escape(value, quote=True)}"')
    if verbatim:
        return match.group(0)
    return f"<{name}{''.join(' ' + a for a in kept)}{' /' if ending.strip() else ''}>"


def sanitize_markdown(text: str) -> str:
    """Markdown (or raw text) whose HTML cannot run: an allowed tag with allowed attributes
    stays; any other `<` that a browser or a markdown renderer would take for the start of a
    tag, comment or declaration gets a zero-width space after it, so that the tag shows as the
    text the student wrote (a TA sees `<img src=x onerror=...>` in the answer). HTML comments
    without a `<` inside stay. Dangerous URL schemes are neutralized."""
    out, pos = [], 0
    for start in _TAG_START.finditer(text):
        i = start.start()
        if i < pos:
            continue  # inside a tag or comment kept whole
        out.append(text[pos:i])
        end = _comment_end(text, i)
        if end is not None:
            out.append(text[i:end])
            pos = end
            continue
        limit = min(len(text), i + _LONGEST_TAG)
        close = _CLOSE_TAG.match(text, i, limit)
        if close and close.group(1).lower() in TAGS:
            out.append(close.group(0))
            pos = close.end()
            continue
        tag = _OPEN_TAG.match(text, i, limit)
        allowed = _allowed_tag(tag) if tag else None
        if allowed is not None:
            out.append(allowed)
            pos = tag.end()
            continue
        out.append("<" + ZWSP)
        pos = i + 1
    out.append(text[pos:])
    return neutralize_schemes("".join(out))


# ----------------------------------------------------------------------------- HTML

def _prune(fragment):
    """Remove the DROPPED elements with their content from an html5lib etree, keeping the text
    that follows each of them."""
    stack = [fragment]
    while stack:
        parent = stack.pop()
        previous = None
        for child in list(parent):
            tag = child.tag if isinstance(child.tag, str) else ""
            if tag.rsplit("}", 1)[-1].lower() in DROPPED:
                if child.tail:
                    if previous is None:
                        parent.text = (parent.text or "") + child.tail
                    else:
                        previous.tail = (previous.tail or "") + child.tail
                parent.remove(child)
            else:
                previous = child
                stack.append(child)
    return fragment


def _cleaner():
    """A bleach Cleaner with this module's policy, whose parser also knows the DROPPED
    elements (so that their content is read as a browser reads it) and prunes them."""
    cleaner = Cleaner(tags=TAGS, attributes=attribute_ok, protocols={"http", "https", "mailto", "data", "attachment"},
                      strip=True, strip_comments=True, css_sanitizer=_CSSSanitizer())
    cleaner.parser = html5lib_shim.BleachHTMLParser(tags=TAGS | DROPPED, strip=True, consume_entities=False,
                                                    namespaceHTMLElements=False)
    walk = cleaner.walker
    cleaner.walker = lambda dom: walk(_prune(dom))
    return cleaner


def sanitize_html(text: str) -> str:
    """HTML reduced to the allow-list (bleach): disallowed tags go, their text stays (script,
    style and the like go whole), attributes and URLs as attribute_ok() says."""
    return neutralize_schemes(_cleaner().clean(text))


# ----------------------------------------------------------------------------- SVG

SVG_NS, XLINK_NS, XML_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink", \
    "http://www.w3.org/XML/1998/namespace"
SVG_ELEMENTS = frozenset({
    "svg", "g", "defs", "symbol", "use", "path", "rect", "circle", "ellipse", "line", "polyline", "polygon",
    "text", "tspan", "title", "desc", "clipPath", "mask", "linearGradient", "radialGradient", "stop",
    "pattern", "image", "marker"})
_SVG_TEXT = frozenset({"text", "tspan", "title", "desc"})
_SVG_ATTRIBUTES = frozenset({
    "id", "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "rx", "ry", "fx", "fy", "width", "height", "d",
    "points", "transform", "viewBox", "preserveAspectRatio", "version", "fill", "fill-opacity", "fill-rule",
    "stroke", "stroke-width", "stroke-linecap", "stroke-linejoin", "stroke-miterlimit", "stroke-dasharray",
    "stroke-dashoffset", "stroke-opacity", "opacity", "clip-path", "clip-rule", "clipPathUnits", "mask",
    "maskUnits", "maskContentUnits", "gradientUnits", "gradientTransform", "spreadMethod", "patternUnits",
    "patternContentUnits", "patternTransform", "offset", "stop-color", "stop-opacity", "font-family",
    "font-size", "font-style", "font-weight", "text-anchor", "dominant-baseline", "alignment-baseline",
    "baseline-shift", "letter-spacing", "dx", "dy", "rotate", "textLength", "lengthAdjust", "markerWidth",
    "markerHeight", "markerUnits", "refX", "refY", "orient", "marker-start", "marker-mid", "marker-end",
    "display", "visibility", "color", "overflow", "vector-effect", "shape-rendering", "text-rendering",
    "image-rendering", "style"})
_URL_IN_VALUE = re.compile(r"url\s*\(", re.IGNORECASE)
_LOCAL_URL = re.compile(r"url\(\s*(['\"]?)#[A-Za-z0-9_.:-]+\1\s*\)")
_MAX_DEPTH = 256
SVG_REMOVED = ('<svg xmlns="http://www.w3.org/2000/svg" width="420" height="24"><text x="4" y="16" '
               'font-family="sans-serif" font-size="13">[SVG image removed by the grader: it was not a '
               'plain drawing]</text></svg>')


def _local(name: str) -> tuple[str, str]:
    """(namespace, local name) of an ElementTree name."""
    if name.startswith("{"):
        namespace, _, local = name[1:].partition("}")
        return namespace, local
    return "", name


def _svg_attributes(element: str, attrib: dict) -> list[str]:
    """The allowed attributes of an SVG element, written back (href as xlink:href, once)."""
    out, linked = [], False
    for name, value in attrib.items():
        namespace, local = _local(name)
        if local == "href" and namespace in ("", XLINK_NS):
            url = _url(value)
            ok = bool(_IMAGE_DATA.match(url)) if element == "image" else \
                (element in ("use", "pattern", "linearGradient", "radialGradient") and url.startswith("#"))
            if ok and not linked:
                out.append(f'xlink:href="{html.escape(value, quote=True)}"')
                linked = True
            continue
        if namespace == XML_NS and local == "space" and value in ("default", "preserve"):
            out.append(f'xml:space="{value}"')
            continue
        if namespace or local not in _SVG_ATTRIBUTES or "\\" in value:  # a CSS escape could spell url(
            continue
        if local == "style":
            value = sanitize_css(value)
            if not value:
                continue
        elif _URL_IN_VALUE.search(value) and len(_URL_IN_VALUE.findall(value)) != len(_LOCAL_URL.findall(value)):
            continue
        out.append(f'{local}="{html.escape(value, quote=True)}"')
    return out


def _svg_element(node, out: list[str], depth: int) -> None:
    namespace, name = _local(node.tag)
    attributes = _svg_attributes(name, node.attrib)
    if depth == 0:
        attributes = [f'xmlns="{SVG_NS}"', f'xmlns:xlink="{XLINK_NS}"'] + attributes
    out.append(f"<{name}{''.join(' ' + a for a in attributes)}>")
    text = name in _SVG_TEXT
    if text and node.text:
        out.append(html.escape(node.text, quote=False))
    for child in node:
        child_ns, child_name = _local(child.tag) if isinstance(child.tag, str) else ("?", "")
        if child_ns in ("", SVG_NS) and child_name in SVG_ELEMENTS and depth < _MAX_DEPTH:
            _svg_element(child, out, depth + 1)
        if text and child.tail:
            out.append(html.escape(child.tail, quote=False))
    out.append(f"</{name}>")


def sanitize_svg(text: str) -> str:
    """An SVG drawing rebuilt from the allow-list: shapes, text, gradients, clips, embedded PNG
    or JPEG images and references inside the drawing; no script, no event attribute, no
    foreignObject, no animation, no link, no <style>, nothing loaded from elsewhere. What is
    not a well-formed SVG document (or declares entities) becomes SVG_REMOVED."""
    if "<!ENTITY" in text:
        return SVG_REMOVED
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError):
        return SVG_REMOVED
    if _local(root.tag) not in ((SVG_NS, "svg"), ("", "svg")):
        return SVG_REMOVED
    out: list[str] = []
    _svg_element(root, out, 0)
    return neutralize_schemes("".join(out))


# ----------------------------------------------------------------------------- outputs and cells

_HINTS = {"width": "number", "height": "number", "unconfined": "bool", "needs_background": ("light", "dark"),
          "alt": "text"}


def _hints(metadata) -> dict:
    """The display hints of an output that renderers read, each of the type they expect."""
    kept = {}
    for key, value in (metadata or {}).items():
        rule = _HINTS.get(key)
        if "/" in key and isinstance(value, dict):
            inner = _hints(value)
            if inner:
                kept[key] = inner
        elif rule == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            kept[key] = value
        elif rule == "bool" and isinstance(value, bool):
            kept[key] = value
        elif isinstance(rule, tuple) and value in rule:
            kept[key] = value
        elif rule == "text" and isinstance(value, str):
            kept[key] = value
    return kept


_LARGEST_MARKUP = 8 << 20  # characters of HTML or markdown in one output: more is not shown (bleach's time)


def sanitize_data(data: dict) -> dict:
    """An output's mime bundle, inert (see the module's docstring). Every image type stays."""
    clean, removed = {}, []
    for mime, value in data.items():
        kind = mime.split(";")[0].strip().lower()
        text = "".join(value) if isinstance(value, list) else value
        markup = isinstance(text, str) and len(text) <= _LARGEST_MARKUP
        try:
            if kind in ("text/plain", "application/json"):
                clean[mime] = value
            elif kind.startswith("image/") and ("svg" in kind or "xml" in kind):
                clean[mime] = sanitize_svg(text) if isinstance(text, str) else SVG_REMOVED
            elif kind.startswith("image/"):
                clean[mime] = value  # shown by an <img> from the data alone: never runs anything
            elif kind == "text/html" and markup:
                clean[mime] = sanitize_html(text)
            elif kind == "text/markdown" and markup:
                clean[mime] = sanitize_markdown(text)
            elif kind == "text/latex" and isinstance(text, str):
                clean[mime] = neutralize_schemes(text)
            else:
                removed.append(mime)
        except Exception:  # a sanitizer that fails keeps nothing of what it was given
            removed.append(mime)
    if removed and not clean:
        clean["text/plain"] = f"[output not shown by the grader: {', '.join(sorted(removed))}]"
    return clean


def _count(value) -> int | None:
    """An execution count as renderers print it: an integer, or nothing."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sanitize_cell(cell) -> None:
    """Make one cell inert in place: a code cell's outputs, a markdown or raw cell's source."""
    if cell.get("cell_type") == "code":
        cell["execution_count"] = _count(cell.get("execution_count"))
        for output in cell.get("outputs", []):
            if "data" in output:
                output["data"] = sanitize_data(output.get("data") or {})
            if "metadata" in output:
                output["metadata"] = _hints(output.get("metadata"))
            if "execution_count" in output:
                output["execution_count"] = _count(output["execution_count"])
    elif cell.get("cell_type") in ("markdown", "raw"):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        try:
            cell["source"] = sanitize_markdown(source)
        except Exception:  # never keep the markup as it was: no tag at all, text as written
            cell["source"] = neutralize_schemes(source.replace("<", "<" + ZWSP))
        if "attachments" in cell:
            cell["attachments"] = {name: {mime: data for mime, data in (bundle or {}).items()
                                          if mime.lower().startswith("image/")}
                                   for name, bundle in (cell.get("attachments") or {}).items()}


def sanitize_notebook(nb):
    """Make a whole notebook inert, in place (and return it)."""
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        sanitize_cell(cell)
    return nb


class SanitizeNotebook(Preprocessor):
    """nbconvert/nbgrader preprocessor: the notebook made inert by sanitize_notebook()."""

    enabled = Bool(True).tag(config=True)

    def preprocess(self, nb, resources):
        return sanitize_notebook(nb), resources


# ----------------------------------------------------------------------------- wiring

def _name(preprocessor) -> str:
    return preprocessor.rsplit(".", 1)[-1] if isinstance(preprocessor, str) else preprocessor.__name__


def autograde_preprocessors(existing) -> list:
    """nbgrader Autograde's autograde_preprocessors with SanitizeNotebook in: after the last of
    those that run or score the notebook (Execute or a subclass, LimitOutput, SaveAutoGrades,
    AssignLatePenalties), so that nbgrader scores exactly what the kernel produced, and before
    nbgrader writes the autograded notebook (the input of formgrader and of generate_feedback)."""
    from nbgrader.preprocessors import Execute

    existing = list(existing)
    if any(p is SanitizeNotebook or _name(p) == "SanitizeNotebook" for p in existing):
        return existing
    grading = {"Execute", "LimitOutput", "SaveAutoGrades", "AssignLatePenalties"}
    after = [i for i, p in enumerate(existing)
             if _name(p) in grading or (isinstance(p, type) and issubclass(p, Execute))]
    if not after:
        raise ValueError("no nbgrader Execute or SaveAutoGrades among the autograde preprocessors")
    at = max(after) + 1
    return existing[:at] + [SanitizeNotebook] + existing[at:]


_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_FIRST_META = re.compile(r"\s*<meta\b([^>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"""([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def has_policy(page: str) -> bool:
    """Whether an HTML page's <head> starts with the CSP policy (in any attribute order or quoting)."""
    head = _HEAD.search(page)
    meta = _FIRST_META.match(page, head.end()) if head else None
    if meta is None:
        return False
    attributes = {m.group(1).lower(): html.unescape(m.group(2) if m.group(2) is not None else m.group(3))
                  for m in _ATTRIBUTE.finditer(meta.group(1))}
    return attributes.get("http-equiv", "").lower() == "content-security-policy" and attributes.get("content") == CSP


def protect_page(path) -> bool:
    """Give the HTML page at path the CSP policy as the first element of its <head>, written
    atomically (same permissions). False when it already starts with it (the feedback template
    puts it there). Raises ValueError for a page without <head>."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    head = _HEAD.search(text)
    if head is None:
        raise ValueError(f"{path}: no <head> to put the Content-Security-Policy in")
    if has_policy(text):
        return False
    text = f"{text[:head.end()]}\n{CSP_META}{text[head.end():]}"
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
