//! Text for CLIP's text tower: cleaning and the byte-level BPE tokenizer.

pub mod clean;
pub mod html;
pub mod tokenizer;

pub use tokenizer::{TokenBatch, Tokenizer};
