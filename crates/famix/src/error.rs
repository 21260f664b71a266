//! famix's error type.
//!
//! Library functions return [`Result<T>`] = `std::result::Result<T, famix::Error>`.
//! The variants a caller can act on are typed — a checkpoint from a newer famix
//! ([`Error::CheckpointTooNew`]), weights whose names or shapes do not match a model
//! ([`Error::KeyMismatch`]), a file that cannot be read or parsed
//! ([`Error::Unreadable`]), an input file or folder that is missing or unusable
//! ([`Error::InvalidInput`]), a dataset folder that is not in the expected layout
//! ([`Error::DatasetLayout`]), a setting out of range ([`Error::InvalidSetting`]), a
//! checkpoint, bank or run folder that does not fit what it is used with
//! ([`Error::Incompatible`]), non-finite values in a file ([`Error::NonFinite`]), a
//! run that diverged ([`Error::Diverged`]), work the caller cancelled
//! ([`Error::Cancelled`]), a folder another process is writing ([`Error::Busy`]).
//! [`Error::kind`] sorts any error, context layers included, into an [`ErrorKind`]
//! to branch on. What is left is a message ([`Error::Msg`]: nothing to do but read
//! it) or a wrapped foreign error (I/O, JSON, libtorch, image decoding), and
//! [`Context`] adds "while doing what" layers exactly like `anyhow`'s, which the
//! binary uses on top.
//!
//! `{}` prints the outermost message; `{:#}` prints the whole chain joined by `": "`
//! (the convention of `anyhow`, so messages read the same in logs and reports).

use std::fmt;
use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the famix library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A famix file whose format version is newer than this build understands.
    CheckpointTooNew {
        /// The file.
        path: PathBuf,
        /// The file's format version.
        version: u32,
        /// The newest version this famix reads.
        supported: u32,
    },
    /// A checkpoint whose tensors do not match the model they are loaded into.
    /// Nothing was loaded. Lists are sorted; each key appears once.
    KeyMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The model, in words ("CLIP image tower", "FAMix segmenter").
        what: String,
        /// Keys the model needs that the file lacks.
        missing: Vec<String>,
        /// Keys present in both with different shapes: "key (file [..], model [..])".
        mismatched: Vec<String>,
        /// Keys in the file that the model has no variable for.
        unexpected: Vec<String>,
    },
    /// A file that exists but cannot be read, decoded or parsed.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What it is not (e.g. "not a readable checkpoint").
        reason: String,
        /// The underlying problem.
        #[source]
        source: Box<Error>,
    },
    /// A dataset root that is not in the layout its reader expects.
    DatasetLayout {
        /// The dataset root (or the sub-folder that is wrong).
        path: PathBuf,
        /// What is missing or wrong, naming the path (this is the message).
        problem: String,
    },
    /// An input file or folder that does not exist, or whose content famix cannot
    /// use (an empty dataset, a bank with the wrong width, a malformed list).
    InvalidInput {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong, naming the path (this is the message).
        problem: String,
    },
    /// A checkpoint, style bank or run folder that does not fit what it is used with:
    /// another model, another run, other settings.
    Incompatible {
        /// The file or folder.
        path: PathBuf,
        /// The disagreement, naming the path (this is the message).
        problem: String,
    },
    /// Training, pretraining or mining diverged (a loss or a weight became NaN or
    /// infinite); the message names the last checkpoint to continue from.
    Diverged {
        /// What happened and what to do (this is the message).
        problem: String,
    },
    /// Long work stopped because the caller asked it to ([`crate::progress::Progress::cancelled`]);
    /// whatever it writes was left in a consistent, resumable state.
    Cancelled {
        /// What was stopped, and where it can be resumed from.
        what: String,
    },
    /// A folder that another process is writing (its writer lock is taken).
    Busy {
        /// The folder (or file).
        path: PathBuf,
        /// Who holds it and what to do (this is the message).
        problem: String,
    },
    /// A setting (flag, configuration field) out of its valid range.
    InvalidSetting {
        /// The setting's key (e.g. `lr`; the CLI shows it as `--lr`).
        name: String,
        /// Why the value is refused.
        problem: String,
    },
    /// A tensor (weights, statistics, optimiser state, a loss) that became NaN or
    /// infinite: training diverged, or a file holds poisoned values.
    NonFinite {
        /// The tensor's name.
        what: String,
        /// How many of its values are not finite.
        count: u64,
    },
    /// An operating-system I/O error without more context.
    Io(#[from] std::io::Error),
    /// A JSON (de)serialisation error.
    Json(#[from] serde_json::Error),
    /// An error reported by libtorch.
    Torch(#[from] tch::TchError),
    /// An image decoding or encoding error.
    Image(#[from] image::ImageError),
    /// Any other failure, as a message.
    Msg(String),
    /// `source`, with what famix was doing when it happened.
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },
}

const MAX_LISTED: usize = 12;

fn listing(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n  {title} ({}): ", items.len())?;
    write!(f, "{}", items.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join(", "))?;
    if items.len() > MAX_LISTED {
        write!(f, ", … and {} more", items.len() - MAX_LISTED)?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::CheckpointTooNew { path, version, supported } => {
                write!(f, "{}: checkpoint format version {version} is newer than this famix ({supported}); upgrade famix", path.display())
            }
            Error::KeyMismatch { path, what, missing, mismatched, unexpected } => {
                write!(f, "{}: the checkpoint does not match the {what}", path.display())?;
                listing(f, "missing keys", missing)?;
                listing(f, "wrong shapes", mismatched)?;
                listing(f, "unexpected keys", unexpected)
            }
            Error::Unreadable { path, reason, source } => {
                write!(f, "{}: {reason}", path.display())?;
                if f.alternate() {
                    write!(f, ": {source:#}")?;
                }
                Ok(())
            }
            Error::DatasetLayout { problem, .. }
            | Error::InvalidInput { problem, .. }
            | Error::Incompatible { problem, .. }
            | Error::Busy { problem, .. }
            | Error::Diverged { problem } => f.write_str(problem),
            Error::Cancelled { what } => write!(f, "cancelled: {what}"),
            Error::InvalidSetting { name, problem } => write!(f, "{}: {problem}", setting_key(name)),
            Error::NonFinite { what, count } => write!(f, "{what} holds {count} non-finite (NaN or infinite) values"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Json(e) => write!(f, "{e}"),
            Error::Torch(e) => write!(f, "{}", first_line(&e.to_string())),
            Error::Image(e) => write!(f, "{e}"),
            Error::Msg(m) => f.write_str(m),
            Error::Context { context, source } => {
                if f.alternate() {
                    write!(f, "{context}: {source:#}")
                } else {
                    f.write_str(context)
                }
            }
        }
    }
}

/// A setting's name as the library's settings spell it (`backbone_lr_mult`; several
/// joined by `/`), whatever form a call site gave it (`--backbone-lr-mult`): front
/// ends add their own spelling ([`setting_flag`] for command lines, the keyword itself
/// in Python).
pub(crate) fn setting_key(name: &str) -> String {
    name.split('/').map(|p| p.trim().trim_start_matches('-').replace('-', "_")).collect::<Vec<_>>().join("/")
}

/// A setting's name as a command-line flag: `backbone_lr_mult` → `--backbone-lr-mult`.
pub fn setting_flag(name: &str) -> String {
    setting_key(name).split('/').map(|p| format!("--{}", p.replace('_', "-"))).collect::<Vec<_>>().join("/")
}

/// The kind of an [`Error`], to branch on ([`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A missing, unreadable or unusable input file, folder, image or text
    /// ([`Error::InvalidInput`], [`Error::Unreadable`], [`Error::DatasetLayout`]).
    InvalidInput,
    /// A setting out of range ([`Error::InvalidSetting`]).
    InvalidSetting,
    /// A checkpoint, bank or run that does not fit ([`Error::Incompatible`],
    /// [`Error::KeyMismatch`], [`Error::CheckpointTooNew`]).
    Incompatible,
    /// Non-finite values in a file, or a run that diverged ([`Error::NonFinite`], [`Error::Diverged`]).
    NonFinite,
    /// Stopped by the caller ([`Error::Cancelled`]).
    Cancelled,
    /// Another process is writing the folder ([`Error::Busy`]).
    Busy,
    /// The operating system refused (disk full, permissions, ...): [`Error::Io`].
    Io,
    /// Anything else (libtorch, encoders, messages).
    Other,
}

/// libtorch messages carry a C++ backtrace after the first line; users need the line.
fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim_end()
}

impl Error {
    /// An error carrying just a message.
    pub fn msg(m: impl fmt::Display) -> Self {
        Error::Msg(m.to_string())
    }

    /// Wraps `self` with what was being done.
    pub fn context(self, c: impl fmt::Display) -> Self {
        Error::Context { context: c.to_string(), source: Box::new(self) }
    }

    /// The kind of this error: that of the outermost typed error under any context
    /// layers (a file that is [`Error::Unreadable`] stays unreadable whatever its cause).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Context { source, .. } => source.kind(),
            Error::InvalidInput { .. } | Error::Unreadable { .. } | Error::DatasetLayout { .. } => ErrorKind::InvalidInput,
            Error::InvalidSetting { .. } => ErrorKind::InvalidSetting,
            Error::Incompatible { .. } | Error::KeyMismatch { .. } | Error::CheckpointTooNew { .. } => ErrorKind::Incompatible,
            Error::NonFinite { .. } | Error::Diverged { .. } => ErrorKind::NonFinite,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::Io(_) => ErrorKind::Io,
            Error::Json(_) | Error::Torch(_) | Error::Image(_) | Error::Msg(_) => ErrorKind::Other,
        }
    }

    /// An [`Error::InvalidInput`] for `path`; `problem` is the whole message.
    pub fn invalid_input(path: impl Into<PathBuf>, problem: impl fmt::Display) -> Self {
        Error::InvalidInput { path: path.into(), problem: problem.to_string() }
    }

    /// An [`Error::InvalidSetting`] for the setting `name` (its key: `lr`).
    pub fn invalid_setting(name: impl Into<String>, problem: impl fmt::Display) -> Self {
        Error::InvalidSetting { name: name.into(), problem: problem.to_string() }
    }

    /// An [`Error::Incompatible`] for `path`; `problem` is the whole message.
    pub(crate) fn incompatible(path: impl Into<PathBuf>, problem: impl fmt::Display) -> Self {
        Error::Incompatible { path: path.into(), problem: problem.to_string() }
    }

    /// Wraps `self`, found while reading `path`, as [`Error::Unreadable`] with `reason`
    /// (a malformed file is an input problem whatever the reader's message was).
    pub(crate) fn unreadable(self, path: impl Into<PathBuf>, reason: impl fmt::Display) -> Self {
        Error::Unreadable { path: path.into(), reason: reason.to_string(), source: Box::new(self) }
    }

    /// The innermost error (the root cause).
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Msg(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Self {
        Error::Msg(m.to_string())
    }
}

macro_rules! foreign {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Msg(e.to_string())
            }
        }
    )*};
}
foreign!(
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    safetensors::SafeTensorError,
    zip::result::ZipError,
    png::DecodingError,
    png::EncodingError,
    std::array::TryFromSliceError,
    regex::Error,
    rand_distr::BetaError,
);

impl<T> From<std::sync::PoisonError<T>> for Error {
    fn from(_: std::sync::PoisonError<T>) -> Self {
        Error::msg("a worker thread panicked while holding a lock")
    }
}

/// Adds context to errors, like `anyhow::Context` (not to `Option`: a missing value is
/// a typed error, made where it is known what is missing).
pub trait Context<T> {
    /// Wraps the error with `c`.
    fn context<C: fmt::Display>(self, c: C) -> Result<T>;
    /// Wraps the error with the message `f` makes (only called on error).
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, c: C) -> Result<T> {
        self.map_err(|e| e.into().context(c))
    }
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// `Error::Msg` from format arguments (or from one displayable value).
macro_rules! format_err {
    ($fmt:literal $($rest:tt)*) => { $crate::error::Error::Msg(format!($fmt $($rest)*)) };
    ($e:expr $(,)?) => { $crate::error::Error::msg($e) };
}
pub(crate) use format_err;

/// Returns early with `Error::Msg` from format arguments (or one displayable value).
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::format_err!($($arg)*)) };
}
pub(crate) use bail;

/// Returns early with a typed error whose message is the format arguments:
/// `fail!(InvalidInput, path, "...")`, `fail!(Incompatible, path, "...")`,
/// `fail!(InvalidSetting, "--flag", "...")`, `fail!(Diverged, "...")`.
macro_rules! fail {
    (InvalidInput, $path:expr, $($arg:tt)*) => { return Err($crate::error::Error::invalid_input($path, format!($($arg)*))) };
    (Incompatible, $path:expr, $($arg:tt)*) => { return Err($crate::error::Error::incompatible($path, format!($($arg)*))) };
    (InvalidSetting, $name:expr, $($arg:tt)*) => {
        return Err($crate::error::Error::invalid_setting($name, format!($($arg)*)))
    };
    (Diverged, $($arg:tt)*) => { return Err($crate::error::Error::Diverged { problem: format!($($arg)*) }) };
}
pub(crate) use fail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_named_by_key_and_shown_as_flags_by_the_command_line() {
        for (given, key, flag) in [
            ("--backbone-lr-mult", "backbone_lr_mult", "--backbone-lr-mult"),
            ("lr", "lr", "--lr"),
            ("--save-interval/--log-interval", "save_interval/log_interval", "--save-interval/--log-interval"),
        ] {
            assert_eq!((setting_key(given), setting_flag(given)), (key.to_string(), flag.to_string()));
        }
        let e = Error::InvalidSetting { name: "--val-limit".into(), problem: "0 validates nothing".into() };
        assert_eq!(e.to_string(), "val_limit: 0 validates nothing");
    }

    #[test]
    fn alternate_prints_the_chain_plain_prints_the_top() {
        let e: Result<()> = Err(Error::msg("root cause")).context("middle").context("top");
        let e = e.unwrap_err();
        assert_eq!(format!("{e}"), "top");
        assert_eq!(format!("{e:#}"), "top: middle: root cause");
        assert!(matches!(e.root(), Error::Msg(m) if m == "root cause"));
    }

    #[test]
    fn key_mismatch_lists_at_most_twelve_keys() {
        let e = Error::KeyMismatch {
            path: "m.pth".into(),
            what: "model".into(),
            missing: (0..15).map(|i| format!("k{i}")).collect(),
            mismatched: vec![],
            unexpected: vec!["x".into()],
        };
        let s = e.to_string();
        assert!(s.starts_with("m.pth: the checkpoint does not match the model"), "{s}");
        assert!(s.contains("missing keys (15): k0,") && s.contains("… and 3 more"), "{s}");
        assert!(s.contains("unexpected keys (1): x") && !s.contains("wrong shapes"), "{s}");
    }

    #[test]
    fn torch_errors_keep_their_first_line() {
        assert_eq!(first_line("\nshape mismatch\nException raised from ...\nframe #0"), "shape mismatch");
    }
}
