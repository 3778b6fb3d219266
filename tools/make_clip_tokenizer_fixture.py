"""Writes tests/fixtures/clip_tokenizer.json: strings and the ids open_clip's `tokenize` gives them
(context 77; trailing zero padding left off). Run with torch + open_clip_torch + ftfy installed:

    bench/.venv/bin/python tools/make_clip_tokenizer_fixture.py
"""
import json
import pathlib
import random

import open_clip

fixed = [
    # captions
    "a photo of a cat", "A photo of a dog.", "a red square in the top left corner", "itap of a {}.",
    "a bad photo of the bird.", "a origami crane.", "a photo of the large truck.", "art of the mountain.",
    "The quick brown fox jumps over the lazy dog!", "two small blue circles on a grey background",
    "", " ", "a", "A", ".", "...", "?!", "hello,world", "hello , world", "e-mail", "state-of-the-art",
    # HTML entities
    "fish &amp; chips", "fish &amp;amp; chips", "fish &amp;amp;amp; chips", "&lt;b&gt;bold&lt;/b&gt;",
    "<b>bold</b> &amp; more", "&quot;quoted&quot;", "caf&eacute;", "&#39;tis", "&#x2019;s", "&copy; 2021",
    "&nbsp;spaced&nbsp;", "&NTILDE;ino", "&hellip;and so on", "&notit; a thing", "&ltx", "50&#37; off",
    "&#128; and &#0; and &#xD800;", "&unknown; entity", "AT&T", "a & b", "&#9731; snowman", "&frac12; cup",
    # mojibake
    "cafÃ©", "naÃ¯ve faÃ§ade", "Ã¼ber", "â€œquotedâ€\x9d", "itâ€™s", "donâ€™t stop", "â€” dash",
    "SchÃ¶ne GrÃ¼ÃŸe", "æ—¥æœ¬èªž", "ðŸ˜€ smile", "Ã©lÃ¨ve", "voilÃ ", "ÃƒÂ© double", "caf\u00c3\u00a9 au lait",
    # accents and scripts
    "café", "naïve", "Zürich", "São Paulo", "Ångström", "crème brûlée", "piñata", "Dvořák", "Łódź",
    "İstanbul", "ΣΊΣΥΦΟΣ", "Ελληνικά", "Привет мир", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
    "e\u0301 combining", "A\u030a", "ﬁne ﬂower", "Ĳssel", "ǅemal",
    # CJK
    "日本語のテキスト", "中文字符", "한국어 텍스트", "漢字とひらがなとカタカナ", "ｶﾀｶﾅ", "ＬＯＵＤ　ＮＯＩＳＥＳ", "全角１２３",
    # emoji
    "😀", "I ❤️ NY", "👍🏽 thumbs", "🏳️‍🌈 flag", "family 👨‍👩‍👧‍👦", "🐱 cat", "emoji🙂inside", "⭐️⭐️⭐️",
    # digits
    "1234567890", "3.14159", "1,000,000", "24/7", "2nd place", "x²", "½ cup", "Ⅻ", "٣ arabic digit", "१२३",
    # contractions
    "it's", "don't", "I'm", "you're", "we've", "they'll", "he'd", "IT'S", "DON'T", "'s alone", "rock 'n' roll",
    "o'clock", "it’s curly", "‘single’", "“double”",
    # whitespace runs
    "a  b", "a\tb", "a\nb", "  leading", "trailing  ", "a \u00a0 b", "a\u2003b", "a\u3000b", "a\r\nb",
    "a\u2028b", "a\x1cb", "a\u200bb", "line1\nline2\nline3", "\t\t\ttabs",
    # controls and escapes
    "bell\x07", "esc\x1b[31mred\x1b[0m", "nul\x00char", "soft\u00adhyphen", "bom\ufeff", "c1\x85control", "c1\x93quote\x94",
    # special tokens and oddities
    "<start_of_text>", "<end_of_text> after", "<START_OF_TEXT>", "<|endoftext|>", "</w>", "a</w>b",
    "http://example.com/path?q=1", "user@example.com", "#hashtag @mention", "C++ and C#", "$100 €50 £20",
    "snake_case_name", "CamelCaseName", "ALLCAPS", "MiXeD CaSe", "(parentheses) [brackets] {braces}",
]

rng = random.Random(0)
words = ["photo", "cat", "dog", "red", "blue", "circle", "square", "the", "a", "of", "in", "small", "large",
         "café", "日本", "😀", "&amp;", "it's", "42", "  ", "\t", "-", "!!", "naïve", "Σ", "ﬁ"]
generated = []
for n in range(70):
    k = rng.randint(1, 12)
    generated.append(" ".join(rng.choice(words) for _ in range(k)))
long = [
    " ".join(["word"] * 100),
    "a very long caption " * 20,
    "supercalifragilisticexpialidocious " * 10,
    "".join(chr(rng.randint(0x4e00, 0x9fff)) for _ in range(120)),
    "😀" * 90,
    ("x" * 300),
]
cases = fixed + generated + long
ids = open_clip.tokenize(cases, context_length=77)
out = []
for text, row in zip(cases, ids.tolist()):
    while row and row[-1] == 0:
        row.pop()
    out.append({"text": text, "ids": row})
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "clip_tokenizer.json"
with open(path, "w") as f:
    json.dump({"context": 77, "cases": out}, f, ensure_ascii=True, indent=0)
print(path, len(out), "strings")
