"""Read a MediaWiki XML dump and strip its markup into plain WikiText-style prose."""

from __future__ import annotations

import bz2
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_DROP_TAGS = re.compile(
    r"<(math|gallery|timeline|score|syntaxhighlight|source)[^>]*>.*?</\1>",
    re.DOTALL | re.IGNORECASE,
)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_FILE_LINK = re.compile(r"^(file|image|category|media):", re.IGNORECASE)
_INTERWIKI = re.compile(r"^[a-z]{2,3}(-[a-z]+)?:", re.IGNORECASE)
_EXT_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_LIST = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_ENTITIES = {
    "&nbsp;": " ",
    "&ndash;": "–",
    "&mdash;": "—",
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&minus;": "−",
}
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")
_DROP_SECTIONS = re.compile(
    r"^=+\s*(References|External links|See also|Further reading|Notes|Bibliography|Sources)\s*=+"
    r".*?(?=^=[^=]|\Z)",
    re.MULTILINE | re.DOTALL | re.IGNORECASE,
)


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced open_ ... close spans (templates, tables), however deeply nested."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def _links(text: str) -> str:
    """[[target|label]] -> label, [[target]] -> target; file/category links are dropped."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find("[[", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        depth, k = 0, j
        while k < len(text):
            if text.startswith("[[", k):
                depth += 1
                k += 2
            elif text.startswith("]]", k):
                depth -= 1
                k += 2
                if depth == 0:
                    break
            else:
                k += 1
        inner = text[j + 2 : k - 2]
        if not _FILE_LINK.match(inner) and not _INTERWIKI.match(inner):
            out.append(_links(inner).split("|")[-1])
        i = k


def clean_wikitext(text: str) -> str:
    """Plain prose from MediaWiki markup: templates, tables, refs and link syntax removed."""
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _DROP_TAGS.sub("", text)
    text = _strip_nested(text, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    text = _DROP_SECTIONS.sub("", text)
    text = _links(text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(lambda m: f"\n{m.group(2)}\n", text)
    text = _LIST.sub("", text)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    text = "\n".join(line for line in lines if line not in ("", "|") or line == "")
    return _BLANKS.sub("\n\n", text).strip()


def iter_articles(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """(title, raw wikitext) of each main-namespace, non-redirect page of an XML dump."""
    title, ns, text, redirect = "", "0", "", False
    for _event, elem in ET.iterparse(stream, events=("end",)):
        tag = elem.tag.rsplit("}", 1)[-1]
        if tag == "title":
            title = elem.text or ""
        elif tag == "ns":
            ns = elem.text or "0"
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            text = elem.text or ""
        elif tag == "page":
            if ns == "0" and not redirect and not text.lstrip().upper().startswith("#REDIRECT"):
                yield title, text
            title, ns, text, redirect = "", "0", "", False
            elem.clear()


def read_dump(path: Path, *, min_chars: int = 500) -> list[tuple[str, str]]:
    """Cleaned (title, text) articles of a .xml or .xml.bz2 dump, short stubs dropped."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as f:
        articles = [(t, clean_wikitext(raw)) for t, raw in iter_articles(f)]
    return [(t, body) for t, body in articles if len(body) >= min_chars]
