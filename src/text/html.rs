//! HTML character references, decoded the two ways CLIP's text cleaning does: Python's
//! `html.unescape` (the HTML5 rules: named references with or without `;`, the longest known
//! prefix of an unknown name, numeric references with the Windows-1252 repairs) and ftfy's
//! stricter pass (only complete `&…;` references, plus a few all-caps names).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The HTML5 named references (`tools/make_html_entities.py`): name, with its `;` where the
/// name has one, a tab, the code points in hex.
const ENTITY_TABLE: &str = include_str!("../../assets/clip/html5_entities.tsv");

/// The longest name `html.unescape` looks at after `&`.
const MAX_NAME: usize = 32;

fn entities() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        ENTITY_TABLE
            .lines()
            .filter_map(|line| {
                let (name, points) = line.split_once('\t')?;
                let value = points
                    .split(' ')
                    .filter_map(|p| u32::from_str_radix(p, 16).ok().and_then(char::from_u32))
                    .collect();
                Some((name, value))
            })
            .collect()
    })
}

/// Windows-1252's characters for bytes 0x80–0x9F (its five undefined bytes kept as the C1
/// controls, as HTML5 and ftfy's "sloppy" codec do).
const C1_AS_1252: [u32; 32] = [
    0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d,
    0x17d, 0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a,
    0x153, 0x9d, 0x17e, 0x178,
];

/// The Windows-1252 reading of a C1 control character (U+0080–U+009F); other characters as
/// they are.
pub fn c1_as_1252(c: char) -> char {
    match c {
        '\u{80}'..='\u{9f}' => char::from_u32(C1_AS_1252[c as usize - 0x80]).unwrap_or(c),
        _ => c,
    }
}

/// What a numeric reference to code point `num` stands for (HTML5: the C1 range is read as
/// Windows-1252, invalid points vanish or become U+FFFD).
fn numeric(num: Option<u32>) -> String {
    let Some(num) = num.filter(|&n| n <= 0x10ffff) else {
        return '\u{fffd}'.to_string();
    };
    let invalid = (0x1..=0x8).contains(&num)
        || num == 0xb
        || (0xe..=0x1f).contains(&num)
        || num == 0x7f
        || (0xfdd0..=0xfdef).contains(&num)
        || (num & 0xfffe) == 0xfffe;
    match num {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => char::from_u32(num)
            .map(c1_as_1252)
            .unwrap_or('\u{fffd}')
            .to_string(),
        0xd800..=0xdfff => '\u{fffd}'.to_string(),
        _ if invalid => String::new(),
        _ => char::from_u32(num).map(String::from).unwrap_or_default(),
    }
}

/// Parses the digits of a numeric reference; `None` when the number exceeds any code point.
fn parse_number(digits: &str, radix: u32) -> Option<u32> {
    let digits = digits.trim_start_matches('0');
    if digits.len() > 8 {
        return None;
    }
    if digits.is_empty() {
        return Some(0);
    }
    u32::from_str_radix(digits, radix).ok()
}

/// Python's `html.unescape`.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let table = entities();
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let (consumed, value) = reference(after, table);
        match value {
            Some(v) => out.push_str(&v),
            None => out.push('&'),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// The reference starting right after an `&`: how many bytes it takes and what it becomes
/// (`None`: not a reference, the `&` stays and nothing is consumed).
fn reference(after: &str, table: &HashMap<&'static str, String>) -> (usize, Option<String>) {
    let bytes = after.as_bytes();
    if bytes.first() == Some(&b'#') {
        let hex = matches!(bytes.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let len = bytes[start..]
            .iter()
            .take_while(|b| {
                if hex {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if len == 0 {
            return (0, None);
        }
        let end = start + len;
        let consumed = end + usize::from(bytes.get(end) == Some(&b';'));
        let num = parse_number(&after[start..end], if hex { 16 } else { 10 });
        return (consumed, Some(numeric(num)));
    }
    // A name: up to 32 characters other than tab, newline, form feed, space, `<`, `&`, `#`, `;`.
    let mut end = 0;
    for (count, (i, c)) in after.char_indices().enumerate() {
        if count == MAX_NAME || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        end = i + c.len_utf8();
    }
    if end == 0 {
        return (0, None);
    }
    let consumed = end + usize::from(after[end..].starts_with(';'));
    let name = &after[..consumed];
    if let Some(v) = table.get(name) {
        return (consumed, Some(v.clone()));
    }
    // The longest known prefix of at least two characters; the rest stays as text.
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in bounds.iter().rev() {
        if let Some(v) = table.get(&name[..cut]) {
            return (consumed, Some(format!("{v}{}", &name[cut..])));
        }
    }
    (consumed, Some(format!("&{name}")))
}

/// ftfy's entity step: only `&name;` / `&#…;` of 1–24 ASCII letters and digits, decoded when
/// the whole reference is known (names as HTML5 has them with their `;`, or such a lowercase
/// name written in capitals when that spelling means nothing else).
pub fn unescape_strict(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let body = after[1..].strip_prefix('#').unwrap_or(&after[1..]);
        let hash = usize::from(after[1..].starts_with('#'));
        let len = body.bytes().take_while(|b| b.is_ascii_alphanumeric()).count();
        if (1..=24).contains(&len) && body[len..].starts_with(';') {
            let whole = &after[..1 + hash + len + 1];
            if let Some(v) = strict_value(whole) {
                out.push_str(&v);
                rest = &after[whole.len()..];
                continue;
            }
        }
        out.push('&');
        rest = &after[1..];
    }
    out.push_str(rest);
    out
}

fn strict_value(whole: &str) -> Option<String> {
    let name = &whole[1..];
    let table = entities();
    if let Some(v) = table.get(name) {
        return name.ends_with(';').then(|| v.clone());
    }
    if name.starts_with('#') {
        let decoded = unescape(whole);
        return (!decoded.contains(';')).then_some(decoded);
    }
    // All-caps spelling of a lowercase name, unless html.unescape reads that spelling
    // as something (a prefix entity such as `&LT`).
    let lower = name.to_lowercase();
    let v = table.get(lower.as_str())?;
    (lower.to_uppercase() == name && unescape(whole) == whole).then(|| v.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_unescape_rules() {
        assert_eq!(
            unescape("&amp;lt; &lt &ltx &notit; &#39;&#x41;&#128;&#0;&#xD800;"),
            "&lt; < <x ¬it; 'A€\u{fffd}\u{fffd}"
        );
        assert_eq!(unescape("a & b &; &#; &unknown;"), "a & b &; &#; &unknown;");
    }

    #[test]
    fn ftfy_unescape_rules() {
        assert_eq!(
            unescape_strict("&amp; &lt &NTILDE; &AMP; &#x2019;"),
            "& &lt Ñ & \u{2019}"
        );
    }
}
