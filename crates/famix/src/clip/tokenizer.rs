//! CLIP's byte-level BPE tokenizer (49,408 tokens), token-exact with OpenAI's and
//! open_clip's `SimpleTokenizer`. The vocabulary (MIT, OpenAI) is embedded in the
//! binary.
//!
//! Text clean-up follows CLIP: ftfy's `fix_text`, HTML unescaping twice, whitespace
//! folding, lower-casing. Of ftfy, famix implements the steps that change ordinary
//! text (HTML entities, Latin ligatures, full-width forms, curly quotes, line breaks,
//! control characters, NFC); ftfy's mojibake repair (text decoded with the wrong
//! codec) is not reproduced.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use crate::error::Result;
use regex::Regex;
use tch::{Kind, Tensor};
use unicode_normalization::UnicodeNormalization;

const BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// `<|startoftext|>`.
pub const SOT: u32 = 49406;
/// `<|endoftext|>`.
pub const EOT: u32 = 49407;
/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;

/// The longest context famix accepts (CLIP uses 77; anything beyond a few thousand
/// tokens is a typo, and a (texts × context) table is allocated from it).
pub const MAX_CONTEXT: usize = 4096;

/// Checks a context length for padded token tables: 2..=[`MAX_CONTEXT`].
pub fn check_context(context: usize) -> Result<()> {
    if !(2..=MAX_CONTEXT).contains(&context) {
        return Err(crate::Error::invalid_setting(
            "context_length",
            format!("{context} is not in 2..={MAX_CONTEXT} (it must hold the start and end tokens)"),
        ));
    }
    Ok(())
}

/// CLIP's byte-level BPE tokenizer (token ids identical to CLIP's `SimpleTokenizer`).
pub struct Tokenizer {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    ranks: HashMap<(String, String), u32>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's reversible byte → printable-character table, in CLIP's order (printable
/// bytes first); the vocabulary's first 256 entries follow this order.
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.iter().zip(cs).map(|(b, c)| (*b as u8, char::from_u32(c).unwrap())).collect()
}

impl Tokenizer {
    /// The process-wide tokenizer (the vocabulary is parsed once).
    pub fn global() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| Tokenizer::new().expect("embedded BPE vocabulary is valid"))
    }

    fn new() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BPE_GZ).read_to_string(&mut text)?;
        let lines: Vec<&str> = text.split('\n').collect();
        // As CLIP: skip the header line, keep 49152 - 256 - 2 merges.
        let merges: Vec<(String, String)> = lines[1..49152 - 256 - 2 + 1]
            .iter()
            .map(|l| {
                let mut it = l.split_whitespace();
                (it.next().unwrap_or_default().to_string(), it.next().unwrap_or_default().to_string())
            })
            .collect();
        let order = bytes_to_unicode();
        let mut byte_encoder = ['\0'; 256];
        for (b, c) in &order {
            byte_encoder[*b as usize] = *c;
        }
        let mut vocab: Vec<String> = order.iter().map(|(_, c)| c.to_string()).collect();
        vocab.extend(order.iter().map(|(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        let encoder = vocab.iter().enumerate().map(|(i, v)| (v.clone(), i as u32)).collect();
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i as u32)).collect();
        let byte_decoder = byte_encoder.iter().enumerate().map(|(b, c)| (*c, b as u8)).collect();
        let pattern = Regex::new(r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")?;
        let cache = Mutex::new(HashMap::new());
        Ok(Tokenizer { encoder, decoder: vocab, ranks, byte_encoder, byte_decoder, pattern, cache })
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// BPE of one pre-token (already byte-encoded), as token ids.
    fn bpe(&self, token: &str) -> Vec<u32> {
        if let Some(ids) = self.cache.lock().unwrap().get(token) {
            return ids.clone();
        }
        let ids = if token == "<|startoftext|>" || token == "<|endoftext|>" {
            vec![self.encoder[token]]
        } else {
            let chars: Vec<char> = token.chars().collect();
            let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
            if let Some(last) = word.last_mut() {
                last.push_str("</w>");
            }
            loop {
                if word.len() < 2 {
                    break;
                }
                let best = word
                    .windows(2)
                    .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())).map(|r| (*r, p[0].clone(), p[1].clone())))
                    .min_by_key(|(r, _, _)| *r);
                let Some((_, first, second)) = best else { break };
                let mut merged = Vec::with_capacity(word.len());
                let mut i = 0;
                while i < word.len() {
                    if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                        merged.push(format!("{first}{second}"));
                        i += 2;
                    } else {
                        merged.push(std::mem::take(&mut word[i]));
                        i += 1;
                    }
                }
                word = merged;
            }
            word.iter().map(|w| self.encoder[w]).collect()
        };
        self.cache.lock().unwrap().insert(token.to_string(), ids.clone());
        ids
    }

    /// Token ids of `text`, without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut out = Vec::new();
        for m in self.pattern.find_iter(&text) {
            let encoded: String = m.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
            out.extend(self.bpe(&encoded));
        }
        out
    }

    /// `<|startoftext|> … <|endoftext|>` ids, unpadded. Longer than `context` is an
    /// error unless `truncate` (then the end token is kept last, as CLIP does).
    pub fn tokenize(&self, text: &str, context: usize, truncate: bool) -> Result<Vec<u32>> {
        // Nothing is allocated from `context` here (it may be usize::MAX: no limit),
        // but it must hold the start and end tokens.
        check_context(context.min(MAX_CONTEXT))?;
        let mut ids = vec![SOT];
        ids.extend(self.encode(text));
        ids.push(EOT);
        if ids.len() > context {
            if !truncate {
                let short: String = text.chars().take(60).collect();
                let more = if short.len() < text.len() { "…" } else { "" };
                let problem = format!("text is {} tokens long, the context is {context} (truncate it to fit): {short:?}{more}", ids.len());
                return Err(crate::error::Error::invalid_input("text", problem));
            }
            ids.truncate(context);
            ids[context - 1] = EOT;
        }
        Ok(ids)
    }

    /// Zero-padded (N, context) int64 tensor of several texts.
    pub fn batch(&self, texts: &[String], context: usize, truncate: bool) -> Result<Tensor> {
        check_context(context)?;
        let mut flat = vec![0i64; texts.len() * context];
        for (i, t) in texts.iter().enumerate() {
            for (j, id) in self.tokenize(t, context, truncate)?.into_iter().enumerate() {
                flat[i * context + j] = id as i64;
            }
        }
        Ok(Tensor::from_slice(&flat).view([texts.len() as i64, context as i64]).to_kind(Kind::Int64))
    }

    /// Text of token ids (special tokens and `</w>` turned back into spaces).
    pub fn decode(&self, ids: &[u32]) -> String {
        let s: String = ids.iter().filter_map(|&i| self.decoder.get(i as usize)).map(String::as_str).collect();
        let bytes: Vec<u8> =
            s.replace("</w>", " ").chars().filter_map(|c| if c == ' ' { Some(b' ') } else { self.byte_decoder.get(&c).copied() }).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// CLIP's `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean(text: &str) -> String {
    // ftfy's fix_text works line by line; HTML is only unescaped in lines without '<'.
    let mut fixed = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        fixed.push_str(&ftfy_lite(segment));
    }
    let unescaped = html_unescape(&html_unescape(&fixed));
    let folded = unescaped.split_whitespace().collect::<Vec<_>>().join(" ");
    folded.to_lowercase()
}

fn html_unescape(s: &str) -> String {
    if s.contains('&') {
        html_escape::decode_html_entities(s).into_owned()
    } else {
        s.to_string()
    }
}

/// The ftfy steps that matter for ordinary text, in ftfy's order.
fn ftfy_lite(segment: &str) -> String {
    let mut text = segment.to_string();
    loop {
        let orig = text.clone();
        if !text.contains('<') {
            text = html_unescape(&text);
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                // Latin ligatures.
                'Ĳ' => out.push_str("IJ"),
                'ĳ' => out.push_str("ij"),
                'ŉ' => out.push_str("ʼn"),
                'Ǳ' => out.push_str("DZ"),
                'ǲ' => out.push_str("Dz"),
                'ǳ' => out.push_str("dz"),
                'Ǆ' => out.push_str("DŽ"),
                'ǅ' => out.push_str("Dž"),
                'ǆ' => out.push_str("dž"),
                'Ǉ' => out.push_str("LJ"),
                'ǈ' => out.push_str("Lj"),
                'ǉ' => out.push_str("lj"),
                'Ǌ' => out.push_str("NJ"),
                'ǋ' => out.push_str("Nj"),
                'ǌ' => out.push_str("nj"),
                'ﬀ' => out.push_str("ff"),
                'ﬁ' => out.push_str("fi"),
                'ﬂ' => out.push_str("fl"),
                'ﬃ' => out.push_str("ffi"),
                'ﬄ' => out.push_str("ffl"),
                'ﬅ' => out.push_str("ſt"),
                'ﬆ' => out.push_str("st"),
                // Character width: the ideographic space and half/full-width forms.
                '\u{3000}' => out.push(' '),
                '\u{FF01}'..='\u{FFEF}' => out.extend(std::iter::once(c).nfkc()),
                _ => out.push(c),
            }
        }
        // Curly quotes, line breaks, control characters.
        let mut text2 = String::with_capacity(out.len());
        let mut chars = out.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\u{02BC}' | '\u{2018}'..='\u{201B}' => text2.push('\''),
                '\u{201C}'..='\u{201F}' => text2.push('"'),
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    text2.push('\n')
                }
                '\u{2028}' | '\u{2029}' | '\u{0085}' => text2.push('\n'),
                '\u{00}'..='\u{08}' | '\u{0B}' | '\u{0E}'..='\u{1F}' | '\u{7F}' => {}
                '\u{206A}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}' => {}
                _ => text2.push(c),
            }
        }
        text = text2.nfc().collect();
        if text == orig {
            return text;
        }
    }
}
