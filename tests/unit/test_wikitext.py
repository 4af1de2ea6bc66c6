import bz2

from optishear.data.wikitext import clean_wikitext, read_dump

RAW = """{{Infobox person|name=Ada {{nowrap|Lovelace}}}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref>{{cite book|title=X}}</ref>
[[File:Ada.jpg|thumb|A [[portrait]]]]
== Life ==
She worked with [[Charles Babbage]] on the [http://example.org Analytical Engine].<!-- hidden -->
{| class="wikitable"
| cell
|}
* A list item
== References ==
* Some book
[[Category:Mathematicians]]
"""


def test_clean_wikitext_strips_markup() -> None:
    text = clean_wikitext(RAW)
    assert text.startswith("Ada Lovelace was an English mathematician.")
    assert "Charles Babbage on the Analytical Engine." in text
    assert "Life" in text
    assert "A list item" in text
    for junk in (
        "{{",
        "}}",
        "[[",
        "]]",
        "<ref",
        "cite book",
        "hidden",
        "wikitable",
        "Category",
        "portrait",
        "Some book",
        "'''",
        "http",
    ):
        assert junk not in text, junk


def test_read_dump_drops_redirects_and_other_namespaces(tmp_path) -> None:
    body = "word " * 200
    xml = f"""<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Kept</title><ns>0</ns><revision><text>{body}</text></revision></page>
<page><title>Redir</title><ns>0</ns><redirect title="Kept"/><revision><text>#REDIRECT [[Kept]]
</text></revision></page>
<page><title>Talk:Kept</title><ns>1</ns><revision><text>{body}</text></revision></page>
<page><title>Stub</title><ns>0</ns><revision><text>short</text></revision></page>
</mediawiki>"""
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(xml.encode()))
    assert [t for t, _ in read_dump(path)] == ["Kept"]
