//! CLIP's text cleaning before BPE (open_clip's default `clean='lower'`): ftfy's `fix_text`,
//! `html.unescape` twice, whitespace runs to one space, strip, lowercase.
//!
//! ftfy is reproduced fix by fix (entities, mojibake, C1 controls, Latin ligatures, full- and
//! half-width forms, curly quotes, line breaks, terminal escapes, control characters, NFC),
//! repeated until nothing changes, line by line as ftfy does. One part is narrower: ftfy's
//! mojibake repair weighs many single-byte encodings with a statistical "badness" score; here
//! a run of characters is repaired when, read back as Windows-1252/Latin-1 bytes, it forms
//! valid multi-byte UTF-8 — the case ftfy exists for (UTF-8 shown as Windows-1252, "cafÃ©").

use unicode_normalization::UnicodeNormalization;

use super::html;

/// What Python's `str.isspace` / `str.split()` treat as whitespace: Unicode's White_Space plus
/// the four information separators U+001C–U+001F.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// open_clip's `_clean_lower`.
pub fn clean_lower(text: &str) -> String {
    let fixed = fix_text(text);
    let unescaped = html::unescape(&html::unescape(&fixed));
    let words: Vec<&str> = unescaped
        .split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect();
    words.join(" ").to_lowercase()
}

/// ftfy's `fix_text` with its default configuration.
pub fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        // ftfy stops unescaping entities for good once a segment contains `<` (it might be
        // HTML source, where entities are meant).
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(text: &str, unescape: bool) -> String {
    let mut text = text.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = html::unescape_strict(&text);
        }
        text = fix_encoding(&text);
        let mapped: String = text.chars().flat_map(map_char).collect();
        text = fix_line_breaks(&mapped);
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_unwanted_control(c));
        text = text.nfc().collect();
        if text == before {
            return text;
        }
    }
}

/// The byte Windows-1252 (ftfy's "sloppy" variant, which keeps its five undefined bytes as the
/// C1 controls) or Latin-1 would have decoded to `c`.
fn single_byte(c: char) -> Option<u8> {
    const HIGH: [(char, u8); 27] = [
        ('\u{20ac}', 0x80),
        ('\u{201a}', 0x82),
        ('\u{192}', 0x83),
        ('\u{201e}', 0x84),
        ('\u{2026}', 0x85),
        ('\u{2020}', 0x86),
        ('\u{2021}', 0x87),
        ('\u{2c6}', 0x88),
        ('\u{2030}', 0x89),
        ('\u{160}', 0x8a),
        ('\u{2039}', 0x8b),
        ('\u{152}', 0x8c),
        ('\u{17d}', 0x8e),
        ('\u{2018}', 0x91),
        ('\u{2019}', 0x92),
        ('\u{201c}', 0x93),
        ('\u{201d}', 0x94),
        ('\u{2022}', 0x95),
        ('\u{2013}', 0x96),
        ('\u{2014}', 0x97),
        ('\u{2dc}', 0x98),
        ('\u{2122}', 0x99),
        ('\u{161}', 0x9a),
        ('\u{203a}', 0x9b),
        ('\u{153}', 0x9c),
        ('\u{17e}', 0x9e),
        ('\u{178}', 0x9f),
    ];
    if (c as u32) < 0x100 {
        return Some(c as u32 as u8);
    }
    HIGH.iter().find(|(h, _)| *h == c).map(|&(_, b)| b)
}

/// Repairs UTF-8 that was decoded as Windows-1252/Latin-1: every run of a lead byte and its
/// continuation bytes that decodes as UTF-8 becomes the character it encodes.
fn fix_encoding(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if let Some(fixed) = utf8_run(&chars[i..]).or_else(|| lost_a0(&chars[i..])) {
            out.push(fixed.0);
            i += fixed.1;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The character a mojibake sequence at the start of `chars` encodes, and its length.
fn utf8_run(chars: &[char]) -> Option<(char, usize)> {
    let lead = single_byte(chars[0])?;
    let len = match lead {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    let bytes: Vec<u8> = chars
        .get(..len)?
        .iter()
        .map(|&c| single_byte(c))
        .collect::<Option<_>>()?;
    let decoded = std::str::from_utf8(&bytes).ok()?;
    decoded.chars().next().map(|c| (c, len))
}

/// ftfy's `restore_byte_a0`, two-byte case: a program that took byte A0 for a space broke the
/// sequence; `Ã` + space is `à` (the space kept, unless a word that makes sense after a bare
/// `Ã` follows), and a few other leads + space are that lead + A0. Returns the character and
/// how many characters it replaces.
fn lost_a0(chars: &[char]) -> Option<(char, usize)> {
    if chars.get(1) != Some(&' ') {
        return None;
    }
    let lead = single_byte(chars[0])?;
    let after: String = chars[2..chars.len().min(7)].iter().collect();
    let bare_word = [" ", "quele", "quela", "quilo", "s "]
        .iter()
        .any(|w| after.starts_with(w));
    if lead == 0xc3 && !bare_word {
        return Some(('à', 1));
    }
    if [0xc2, 0xc3, 0xc5, 0xce, 0xd0, 0xd9].contains(&lead) {
        let decoded = std::str::from_utf8(&[lead, 0xa0]).ok()?.chars().next()?;
        return Some((decoded, 2));
    }
    None
}

/// The per-character fixes: C1 controls read as Windows-1252, Latin ligatures and digraphs
/// split, full-/half-width forms to their usual width, curly quotes straightened.
fn map_char(c: char) -> Vec<char> {
    const LIGATURES: [(char, &str); 22] = [
        ('Ĳ', "IJ"),
        ('ĳ', "ij"),
        ('ŉ', "ʼn"),
        ('Ǳ', "DZ"),
        ('ǲ', "Dz"),
        ('ǳ', "dz"),
        ('Ǆ', "DŽ"),
        ('ǅ', "Dž"),
        ('ǆ', "dž"),
        ('Ǉ', "LJ"),
        ('ǈ', "Lj"),
        ('ǉ', "lj"),
        ('Ǌ', "NJ"),
        ('ǋ', "Nj"),
        ('ǌ', "nj"),
        ('ﬀ', "ff"),
        ('ﬁ', "fi"),
        ('ﬂ', "fl"),
        ('ﬃ', "ffi"),
        ('ﬄ', "ffl"),
        ('ﬅ', "ſt"),
        ('ﬆ', "st"),
    ];
    let c = html::c1_as_1252(c);
    if let Some((_, s)) = LIGATURES.iter().find(|(l, _)| *l == c) {
        return s.chars().collect();
    }
    match c {
        '\u{3000}' => vec![' '],
        '\u{ff01}'..='\u{ffef}' => {
            let alt: Vec<char> = std::iter::once(c).nfkc().collect();
            // ftfy's width fix runs after its quote fix in the same pass would see these.
            alt.into_iter().map(uncurl).collect()
        }
        _ => vec![uncurl(c)],
    }
}

fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI terminal escapes: ESC `[`, decimal digits (any script's, as Python's `\d`) and
/// `;`, one ASCII letter.
fn remove_terminal_escapes(text: &str) -> String {
    static ESCAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    if !text.contains('\x1b') {
        return text.to_string();
    }
    let escape = ESCAPE.get_or_init(|| regex::Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("valid pattern"));
    escape.replace_all(text, "").into_owned()
}

/// ftfy's `remove_control_chars`.
fn is_unwanted_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_common_mojibake_and_typography() {
        assert_eq!(fix_text("cafÃ© â€œquotedâ€\u{9d}"), "café \"quoted\"");
        assert_eq!(
            fix_text("ﬂubberiﬁc ＬＯＵＤ　ＮＯＩＳＥ"),
            "flubberific LOUD NOISE"
        );
        assert_eq!(fix_text("voilÃ  deux xÃ y Â foo"), "voilà deux xà y \u{a0}foo");
        assert_eq!(clean_lower("  Hello\t\u{1c}WORLD &amp;amp; "), "hello world &");
    }
}
