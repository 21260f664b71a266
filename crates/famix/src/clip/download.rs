//! Downloads OpenAI's published CLIP ResNet checkpoints into a cache folder. The
//! SHA-256 is part of each URL (as in CLIP's own loader) and is verified; a partial
//! download resumes with an HTTP Range request and is renamed into place only when
//! complete and verified.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use crate::io::sha256_file;
use crate::progress::{Progress, Unit};

/// OpenAI's download server for CLIP checkpoints.
pub const OPENAI_BASE: &str = "https://openaipublic.azureedge.net/clip/models";

/// (name, sha256, file name) of the ResNet CLIP checkpoints famix supports.
pub const MODELS: &[(&str, &str, &str)] = &[
    ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
];

/// CLIP's own cache folder, so downloads are shared with the Python tools.
pub fn default_cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("clip")
}

/// (name, SHA-256, file name) of a supported model, case-insensitively.
pub(crate) fn lookup(name: &str) -> Result<(&'static str, &'static str, &'static str)> {
    MODELS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| crate::Error::invalid_input("model", format!("unknown CLIP model {name:?}; choose one of {}", names().join(", "))))
}

/// The supported model names.
pub fn names() -> Vec<&'static str> {
    MODELS.iter().map(|m| m.0).collect()
}

/// Downloads `name` from `base_url` (OpenAI's by default) into `dir`; returns the
/// verified file's path. An existing verified file is reused.
pub fn download(name: &str, dir: &Path, base_url: &str, progress: &dyn Progress) -> Result<PathBuf> {
    let (_, sha, file) = lookup(name)?;
    fetch(base_url, sha, file, dir, progress)
}

/// The largest file a download may produce (OpenAI's largest ResNet CLIP, RN50x64,
/// is 1.26 GB): a server sending an endless body is cut off here.
pub const MAX_DOWNLOAD_BYTES: u64 = 4 << 30;

/// Fetches `{base_url}/{sha}/{file}` into `dir/file`, resuming `dir/file.partial`.
/// A partial file that is already complete is verified and renamed without a
/// request; the body is bounded by its Content-Length and [`MAX_DOWNLOAD_BYTES`].
pub fn fetch(base_url: &str, sha: &str, file: &str, dir: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    fetch_limited(base_url, sha, file, dir, MAX_DOWNLOAD_BYTES, progress)
}

/// [`fetch`] with a byte limit of `max_bytes` instead of [`MAX_DOWNLOAD_BYTES`].
pub fn fetch_limited(base_url: &str, sha: &str, file: &str, dir: &Path, max_bytes: u64, progress: &dyn Progress) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join(file);
    if target.is_file() {
        if sha256_file(&target)? == sha {
            return Ok(target);
        }
        progress.notice(&format!("{} exists but its SHA-256 does not match; downloading again", target.display()));
        std::fs::remove_file(&target).with_context(|| format!("cannot remove {}", target.display()))?;
    }
    let partial = dir.join(format!("{file}.partial"));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if have > 0 && sha256_file(&partial)? == sha {
        return finish(&partial, &target);
    }
    let url = format!("{}/{sha}/{file}", base_url.trim_end_matches('/'));
    let mut req = ureq::get(&url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // The partial file is not the right file but the server has nothing after it.
        Err(ureq::Error::Status(416, _)) => {
            std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
            bail!("{}: the server has no data past its {have} bytes and they do not verify; it was removed, run again", partial.display());
        }
        Err(e) => bail!("download of {url} failed: {e}"),
    };
    let (out, start) = match resp.status() {
        206 => (OpenOptions::new().append(true).open(&partial).with_context(|| format!("cannot append to {}", partial.display()))?, have),
        200 => (std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?, 0),
        s => bail!("download of {url}: unexpected HTTP status {s}"),
    };
    let total = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok()).map(|n| n.saturating_add(start));
    let limit = total.unwrap_or(max_bytes).min(max_bytes);
    progress.start(file, total.unwrap_or(0), start, Unit::Bytes);
    let res = copy_bounded(resp.into_reader(), out, start, limit, &partial, progress);
    progress.finish();
    res.with_context(|| format!("downloading {url}"))?;
    let got = sha256_file(&partial)?;
    if got != sha {
        std::fs::remove_file(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
        bail!("downloaded {file} has SHA-256 {got}, expected {sha}; the partial file {} was removed, run again", partial.display());
    }
    finish(&partial, &target)
}

/// Appends the body to `out` (which already holds `start` bytes), never past `limit`.
fn copy_bounded(
    mut reader: impl Read,
    mut out: std::fs::File,
    start: u64,
    limit: u64,
    partial: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut written = start;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).context("connection lost; run again to resume")?;
        if n == 0 {
            break;
        }
        if written + n as u64 > limit {
            bail!(
                "{} would grow past {limit} bytes (the announced size or famix's limit): the server sends more than the file",
                partial.display()
            );
        }
        out.write_all(&buf[..n]).with_context(|| format!("cannot write {}", partial.display()))?;
        written += n as u64;
        progress.advance(n as u64);
    }
    out.sync_all().with_context(|| format!("cannot sync {}", partial.display()))
}

/// Moves a verified partial download into place.
fn finish(partial: &Path, target: &Path) -> Result<PathBuf> {
    std::fs::rename(partial, target).with_context(|| format!("cannot move {} to {}", partial.display(), target.display()))?;
    Ok(target.to_path_buf())
}
