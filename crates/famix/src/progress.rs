//! Progress and notices from long-running library work.
//!
//! The library never prints. Functions that run for a while (training, mining,
//! evaluation, downloads) take a `&dyn Progress` and report through it: a task
//! starts with a known length, advances, shows a short status, and ends; things the
//! user should know on the way (a skipped file, a validation result) are notices.
//! The `famix` binary renders this with progress bars; library users pass
//! [`Silent`] or their own implementation (a log, a GUI, a test recorder).

/// The unit a task counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Iterations, batches, images.
    Items,
    /// Bytes (downloads).
    Bytes,
}

/// Receives progress from library functions. Every method has an empty default,
/// so an implementation overrides only what it shows.
pub trait Progress: Sync {
    /// A task of `total` units starts, `position` of them already done (resumed work).
    fn start(&self, _task: &str, _total: u64, _position: u64, _unit: Unit) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// A short running status, e.g. `"loss 0.4321"`.
    fn status(&self, _status: &str) {}
    /// A line the user should read (skipped input, a validation result, a warning).
    fn notice(&self, _line: &str) {}
    /// Numbers measured at iteration `iteration` (training: `loss`, `lr_head`,
    /// `lr_backbone`, `images_per_s` at each log line; `val_miou` at each validation;
    /// `<name>_miou` for each monitored set), for callers that plot or log them.
    fn metrics(&self, _iteration: u64, _values: &[(&str, f64)]) {}
    /// The current task ended (successfully or not).
    fn finish(&self) {}
    /// Asked between steps of long work (training and pretraining iterations, mining
    /// batches, evaluated images): `true` stops it at the next step, after writing
    /// what a resume needs (a checkpoint, the bank), with [`crate::Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

/// Records notices (and the last status) in memory: for tests and for callers that
/// show them later.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every notice, in order.
    pub notices: std::sync::Mutex<Vec<String>>,
    /// Units advanced in total.
    pub advanced: std::sync::atomic::AtomicU64,
}

impl Progress for Recorder {
    fn advance(&self, n: u64) {
        self.advanced.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    fn notice(&self, line: &str) {
        self.notices.lock().unwrap_or_else(|e| e.into_inner()).push(line.to_string());
    }
}
