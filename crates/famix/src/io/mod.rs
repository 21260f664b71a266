//! File formats, weight import, hashing and safe file writing.
pub mod archive;
mod hash;
pub mod pickle;
pub mod run_folder;
pub(crate) mod tensorboard;
pub mod weights;

pub use hash::{sha256_file, sha256_hex};
pub(crate) use weights::load_vars;
pub use weights::StateDict;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};

/// The prefix of the temporary siblings files are written to before being renamed
/// into place (`.NAME.tmp-PID`); [`clean_temp_files`] removes leftovers of killed runs.
const TEMP_MARK: &str = ".tmp-";

/// The temporary sibling a file is written to before being renamed into place.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_MARK}{}", std::process::id()))
}

/// Removes temporary files that a killed writer left in `dir` (only ours: hidden
/// names with the temp mark). Returns how many were removed.
pub(crate) fn clean_temp_files(dir: &Path) -> Result<usize> {
    remove_matching(dir, &|name| name.starts_with('.') && name.contains(TEMP_MARK))
}

/// Removes the temporary files a killed writer of `path` left beside it.
pub(crate) fn clean_temp_siblings(path: &Path) -> Result<usize> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix = format!(".{}{TEMP_MARK}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    remove_matching(dir, &|name| name.starts_with(&prefix))
}

/// Removes the files in `dir` whose name passes `stale`; returns how many.
fn remove_matching(dir: &Path, stale: &dyn Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for e in entries.flatten() {
        if stale(&e.file_name().to_string_lossy()) && e.path().is_file() {
            std::fs::remove_file(e.path()).with_context(|| format!("cannot remove stale temp file {}", e.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Makes a rename in `dir` durable (a crash after it cannot bring the old entry back).
fn sync_dir(dir: &Path) -> Result<()> {
    let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    std::fs::File::open(d).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync folder {}", d.display()))
}

/// Crash-testing hook: with `FAMIX_CRASH_AT=N` in the environment, the N-th call
/// (counting from 1, over the whole process) aborts the process on the spot, as a
/// `kill -9` or a power cut would. Called around every durable step of
/// [`atomic_write`]; tests use it to kill runs at each commit point and check that
/// they resume exactly. Without the variable it does nothing.
pub(crate) fn crash_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    if let Some(at) = *AT.get_or_init(|| std::env::var("FAMIX_CRASH_AT").ok().and_then(|v| v.parse().ok())) {
        if COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
            std::process::abort();
        }
    }
}

/// Writes `bytes` to `path` atomically and durably: a temp file in the same folder,
/// fsync, rename, fsync of the folder. A crash at any point leaves either the old
/// file or the new one, never a torn one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() {
        crate::error::fail!(InvalidInput, path, "{} is a folder: give the path of the file to write", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    let tmp = temp_path(path);
    let res = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        crash_point();
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        crash_point();
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// `atomic_write` for text/JSON.
pub fn atomic_write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value)?;
    s.push('\n');
    atomic_write(path, s.as_bytes())
}

/// Reads a JSON file into `T`, naming the file in any error. Files above 256 MiB are
/// refused before reading (famix's JSON files are metadata, far smaller).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let meta = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::error::fail!(InvalidInput, path, "{} not found", path.display()),
        r => r.with_context(|| format!("cannot read {}", path.display()))?,
    };
    if meta.len() > 256 << 20 {
        crate::error::fail!(InvalidInput, path, "{}: {} bytes is too large for a famix JSON file", path.display(), meta.len());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| crate::Error::from(e).unreadable(path, "unreadable JSON"))
}

/// An advisory lock on a folder (a `.lock` file inside it, held until drop), so two
/// writers cannot interleave in one run folder or bank.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl FolderLock {
    /// Takes the lock on `path` (a `path.lock` file beside it for files, `path/.lock`
    /// for folders), or fails at once naming who holds it.
    pub fn acquire(path: &Path, what: &str) -> Result<FolderLock> {
        let lock = if path.is_dir() { path.join(".lock") } else { PathBuf::from(format!("{}.lock", path.display())) };
        if let Some(d) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create folder {}", d.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock)
            .with_context(|| format!("cannot open lock file {}", lock.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = std::io::Read::read_to_string(&mut f, &mut holder);
                let pid = if holder.trim().is_empty() { String::new() } else { format!(" (pid {})", holder.trim()) };
                return Err(crate::Error::Busy {
                    path: path.to_path_buf(),
                    problem: format!(
                        "{} is in use by another famix process{pid} ({what}); wait for it to finish or stop it",
                        path.display()
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", lock.display())),
        }
        f.set_len(0)?;
        write!(f, "{}", std::process::id())?;
        Ok(FolderLock { _file: f, path: lock })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
