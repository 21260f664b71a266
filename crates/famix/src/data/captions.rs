//! Image–caption sets for CLIP pretraining.
//!
//! One layout: a `captions.jsonl` file with one JSON object per line,
//! `{"image": "images/0001.png", "text": "a foggy street with two cars."}`, image
//! paths relative to the file's folder (absolute paths are taken as they are). Blank
//! lines are skipped; an image may appear on several lines (several captions). Every
//! problem — a line that is not such an object, an empty caption, an image that does
//! not exist — is an error naming the file and the line number, found when the set
//! is opened rather than hours into a run.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The file name `CaptionSet::open` looks for in a folder.
pub const CAPTIONS_FILE: &str = "captions.jsonl";

/// Longest caption accepted (bytes): captions are sentences, not documents.
const MAX_CAPTION_BYTES: usize = 4096;

#[derive(Deserialize)]
struct Line {
    image: String,
    text: String,
}

/// An opened caption set.
#[derive(Debug, Clone)]
pub struct CaptionSet {
    /// The captions file.
    pub file: PathBuf,
    /// (image path, caption) per line, in file order.
    pub items: Vec<(PathBuf, String)>,
}

impl CaptionSet {
    /// Opens `path`: a captions file, or a folder holding `captions.jsonl`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join(CAPTIONS_FILE) } else { path.to_path_buf() };
        let layout = |problem: String| Error::DatasetLayout { path: file.clone(), problem };
        let text = std::fs::read_to_string(&file).map_err(|e| layout(format!("cannot read captions file {}: {e}", file.display())))?;
        let root = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut items = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let item = parse_line(raw, &root).map_err(|p| layout(format!("{} line {}: {p}", file.display(), i + 1)))?;
            items.push(item);
        }
        if items.is_empty() {
            return Err(layout(format!(
                "{}: no captions (expected lines like {{\"image\": \"images/0001.png\", \"text\": \"...\"}})",
                file.display()
            )));
        }
        Ok(CaptionSet { file, items })
    }

    /// Number of (image, caption) pairs.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

fn parse_line(raw: &str, root: &Path) -> std::result::Result<(PathBuf, String), String> {
    let line: Line = serde_json::from_str(raw).map_err(|e| format!("not a {{\"image\": ..., \"text\": ...}} object ({e})"))?;
    let text = line.text.trim();
    if text.is_empty() {
        return Err("empty caption".into());
    }
    if text.len() > MAX_CAPTION_BYTES {
        return Err(format!("caption of {} bytes (at most {MAX_CAPTION_BYTES})", text.len()));
    }
    if line.image.trim().is_empty() {
        return Err("empty image path".into());
    }
    let image = root.join(&line.image);
    if !image.is_file() {
        return Err(format!("image {} not found", image.display()));
    }
    Ok((image, text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named_by_number() {
        let dir = std::env::temp_dir().join(format!("famix-captions-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::write(dir.join("images/a.png"), b"x").unwrap();
        let write = |s: &str| std::fs::write(dir.join(CAPTIONS_FILE), s).unwrap();
        write("{\"image\": \"images/a.png\", \"text\": \"a car.\"}\n\n{\"image\": \"images/a.png\", \"text\": \"two cars.\"}\n");
        let set = CaptionSet::open(&dir).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.items[1].1, "two cars.");
        for (bad, want) in [
            ("{\"image\": \"images/a.png\", \"text\": \"ok\"}\n{\"image\": 3}\n", "line 2: not a"),
            ("\n\n{\"image\": \"images/b.png\", \"text\": \"x\"}\n", "line 3: image"),
            ("{\"image\": \"images/a.png\", \"text\": \"  \"}\n", "line 1: empty caption"),
            ("", "no captions"),
        ] {
            write(bad);
            let e = CaptionSet::open(&dir).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
