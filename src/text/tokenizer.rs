//! CLIP's byte-level BPE tokenizer, with ids identical to open_clip's `tokenize`: cleaning
//! ([`clean_lower`]), the pre-tokenising pattern, byte-level BPE with `</w>` on each word's
//! last symbol, `<start_of_text>` (49406) … `<end_of_text>` (49407), zero padding, and
//! truncation that keeps the end token last.
//!
//! The vocabulary is OpenAI's `bpe_simple_vocab_16e6.txt.gz`, shipped unchanged in
//! `assets/clip/` under its MIT licence and compiled into the binary: no download, ever.

use std::collections::HashMap;
use std::io::Read;
use std::sync::OnceLock;

use regex::Regex;

use super::clean::clean_lower;

const VOCAB_GZ: &[u8] = include_bytes!("../../assets/clip/bpe_simple_vocab_16e6.txt.gz");
/// The merges CLIP uses: the file's lines after its header, up to a vocabulary of 49,408.
const MERGES: usize = 49152 - 256 - 2;
pub const START_OF_TEXT: &str = "<start_of_text>";
pub const END_OF_TEXT: &str = "<end_of_text>";
pub const SOT: u32 = 49406;
pub const EOT: u32 = 49407;
pub const VOCAB_SIZE: usize = 49408;
/// CLIP's text context.
pub const DEFAULT_CONTEXT: usize = 77;

/// Token ids of a batch of texts, `[texts, context]` row-major, padded with 0.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub context: usize,
    /// How many texts were longer than the context and were cut.
    pub truncated: usize,
}

impl TokenBatch {
    pub fn rows(&self) -> impl Iterator<Item = &[u32]> {
        self.ids.chunks(self.context)
    }
}

pub struct Tokenizer {
    /// Symbol string → id.
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Byte → id of its one-byte symbol (add 256 for the symbol with `</w>`).
    byte_ids: [u32; 256],
    /// Symbol character → byte, for decoding.
    byte_of_char: HashMap<char, u8>,
    pattern: Regex,
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others
/// for `U+0100 + n` in byte order. The order of this list is the order of the vocabulary.
fn byte_chars() -> Vec<(u8, char)> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut table: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, b as char))
        .collect();
    for (n, b) in (0..=255u8).filter(|&b| !printable(b)).enumerate() {
        table.push((b, char::from_u32(256 + n as u32).expect("valid code point")));
    }
    table
}

impl Tokenizer {
    /// The shared tokenizer (the vocabulary is decompressed once per process).
    pub fn clip() -> &'static Tokenizer {
        static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
        TOKENIZER.get_or_init(|| Tokenizer::from_merges(&read_vocab()))
    }

    fn from_merges(text: &str) -> Self {
        let table = byte_chars();
        let mut decoder: Vec<String> = table.iter().map(|(_, c)| c.to_string()).collect();
        decoder.extend(table.iter().map(|(_, c)| format!("{c}</w>")));
        let merges: Vec<(&str, &str)> = text
            .split('\n')
            .skip(1)
            .take(MERGES)
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some((parts.next()?, parts.next()?))
            })
            .collect();
        decoder.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        decoder.push(START_OF_TEXT.to_string());
        decoder.push(END_OF_TEXT.to_string());
        // Later entries win, as in Python's dict(zip(vocab, range(len(vocab)))).
        let encoder: HashMap<String, u32> = decoder
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let mut merge_ids = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (Some(&l), Some(&r), Some(&m)) =
                (encoder.get(*a), encoder.get(*b), encoder.get(&format!("{a}{b}")))
            else {
                continue;
            };
            merge_ids.insert((l, r), (rank as u32, m));
        }
        let mut byte_ids = [0u32; 256];
        for (i, (b, _)) in table.iter().enumerate() {
            byte_ids[*b as usize] = i as u32;
        }
        let pattern = Regex::new(&format!(
            r"{}|{}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
            regex::escape(START_OF_TEXT),
            regex::escape(END_OF_TEXT)
        ))
        .expect("valid pattern");
        Self {
            encoder,
            decoder,
            merges: merge_ids,
            byte_ids,
            byte_of_char: table.iter().map(|&(b, c)| (c, b)).collect(),
            pattern,
        }
    }

    /// The BPE ids of `text` without the start and end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let cleaned = clean_lower(text);
        let mut ids = Vec::new();
        for word in self.pattern.find_iter(&cleaned) {
            let word = word.as_str();
            match self.encoder.get(word) {
                Some(&id) if word == START_OF_TEXT || word == END_OF_TEXT => ids.push(id),
                _ => ids.extend(self.bpe(word)),
            }
        }
        ids
    }

    /// Byte-level BPE of one pre-token: merge the adjacent pair of lowest rank, every
    /// occurrence left to right, until no ranked pair is left.
    fn bpe(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if let Some(last) = symbols.last_mut() {
            *last += 256;
        }
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|p| {
                    self.merges
                        .get(&(p[0], p[1]))
                        .map(|&(rank, _)| (rank, p[0], p[1]))
                })
                .min();
            let Some((rank, left, right)) = best else {
                return symbols;
            };
            let merged = self.merges[&(left, right)].1;
            debug_assert_eq!(self.merges[&(left, right)].0, rank);
            let mut out = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == left && symbols[i + 1] == right {
                    out.push(merged);
                    i += 2;
                } else {
                    out.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = out;
        }
    }

    /// open_clip's `tokenize`: `[SOT] + ids + [EOT]` per text, cut to `context` with EOT kept
    /// last, padded with 0.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], context: usize) -> TokenBatch {
        let mut ids = vec![0u32; texts.len() * context];
        let mut truncated = 0;
        for (row, text) in ids.chunks_mut(context).zip(texts) {
            let mut tokens = vec![SOT];
            tokens.extend(self.encode(text.as_ref()));
            tokens.push(EOT);
            if tokens.len() > context {
                tokens.truncate(context);
                if let Some(last) = tokens.last_mut() {
                    *last = EOT;
                }
                truncated += 1;
            }
            row[..tokens.len()].copy_from_slice(&tokens);
        }
        TokenBatch {
            ids,
            context,
            truncated,
        }
    }

    /// The text of `ids` (special tokens spelled out, `</w>` as a space, bad UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(symbol) = self.decoder.get(id as usize) else {
                continue;
            };
            // Every vocabulary character, `</w>` and the special tokens included, stands for a byte.
            bytes.extend(symbol.chars().filter_map(|c| self.byte_of_char.get(&c)));
        }
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }
}

fn read_vocab() -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(VOCAB_GZ)
        .read_to_string(&mut text)
        .expect("the vocabulary compiled into vitkit is valid gzip text");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_shape() {
        let t = Tokenizer::clip();
        assert_eq!(t.decoder.len(), VOCAB_SIZE);
        assert_eq!(t.encoder[START_OF_TEXT], SOT);
        assert_eq!(t.encoder[END_OF_TEXT], EOT);
    }

    #[test]
    fn round_trip_and_truncation() {
        let t = Tokenizer::clip();
        let ids = t.encode("a photo of a cat.");
        assert_eq!(t.decode(&ids), "a photo of a cat . ");
        let long = "word ".repeat(100);
        let batch = t.tokenize(&[long.as_str(), "hi"], 8);
        let rows: Vec<&[u32]> = batch.rows().collect();
        assert_eq!(rows[0][0], SOT);
        assert_eq!(rows[0][7], EOT);
        assert_eq!(rows[1][3..], [0; 5]);
        assert_eq!(batch.truncated, 1);
    }
}
