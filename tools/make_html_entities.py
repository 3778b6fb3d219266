"""Writes assets/clip/html5_entities.tsv: the HTML5 named character references (the WHATWG list, as
Python's html.entities.html5 holds it), one per line: name (with its ';' when it has one), a tab,
the code points in hex separated by spaces. vitkit's CLIP text cleaning reads it at compile time to
unescape entities as Python's html.unescape does."""
import html.entities
import pathlib

out = pathlib.Path(__file__).resolve().parent.parent / "assets" / "clip" / "html5_entities.tsv"
with open(out, "w", encoding="utf-8") as f:
    for name, chars in sorted(html.entities.html5.items()):
        f.write(name + "\t" + " ".join(f"{ord(c):x}" for c in chars) + "\n")
print(out, len(html.entities.html5))
