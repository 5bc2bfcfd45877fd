//! Writes the Hugging Face tokenizer files of `data::hf_tokenizer_files` to a
//! folder (used by `tests/check_hf_tokenizer.py`).
//!
//! ```text
//! cargo run -p hyperion-data --example write_hf_tokenizer -- gpt2 OUT_DIR
//! cargo run -p hyperion-data --example write_hf_tokenizer -- char OUT_DIR TEXT_FILE...
//! ```
//! For `char` the vocabulary is the sorted char set of the text files; it is also
//! written to `OUT_DIR/chars.txt` (id order).

use data::{hf_tokenizer_files, Meta, Tokenizer, TokenizerKind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: write_hf_tokenizer gpt2|char OUT_DIR [TEXT_FILE...]";
    let (kind, out) = match args.as_slice() {
        [kind, out, ..] => (kind.parse::<TokenizerKind>()?, std::path::PathBuf::from(out)),
        _ => return Err(usage.into()),
    };
    let (vocab_size, chars) = match kind {
        TokenizerKind::Gpt2 => (data::GPT2_VOCAB_SIZE, None),
        TokenizerKind::Char => {
            let mut text = String::new();
            for f in &args[2..] {
                text.push_str(&std::fs::read_to_string(f)?);
            }
            let chars = match Tokenizer::char(&text) {
                Tokenizer::Char(v) => v.as_string(),
                _ => unreachable!("Tokenizer::char gives a char tokenizer"),
            };
            (chars.chars().count(), Some(chars))
        }
        TokenizerKind::Hf => return Err("a tokenizer.json is already a Hugging Face tokenizer: copy it".into()),
    };
    let meta = Meta::new(kind, vocab_size, chars.clone());
    std::fs::create_dir_all(&out)?;
    for (name, bytes) in hf_tokenizer_files(&meta)? {
        std::fs::write(out.join(&name), bytes)?;
        println!("wrote {}", out.join(&name).display());
    }
    if let Some(chars) = chars {
        std::fs::write(out.join("chars.txt"), chars)?;
    }
    Ok(())
}
