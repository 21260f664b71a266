//! The run folder of a long, resumable job (segmenter training, CLIP pretraining) and
//! what every such job keeps in it:
//!
//! ```text
//! RUN/config.json        the run's settings (the one source of them on resume)
//! RUN/train_log.jsonl    one JSON object per log line / validation
//! RUN/latest.safetensors weights + optimiser state (optim.*) + RunState (metadata): one file, one rename
//! RUN/best.safetensors   the best validation's weights (segmenter training)
//! RUN/tensorboard/       TensorBoard event files, on request
//! RUN/.lock              held by the one writer
//! ```
//!
//! A checkpoint records the log's length, so a resume cuts the log back to it and
//! every iteration appears once even after a crash between a log line and the next
//! checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};
use crate::io::FolderLock;

/// The paths of a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// The run folder at `dir` (nothing is created).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RunFolder { dir: dir.into() }
    }
    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `train_log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.dir.join("train_log.jsonl")
    }
    /// `latest.safetensors`.
    pub fn latest(&self) -> PathBuf {
        self.dir.join("latest.safetensors")
    }
    /// `best.safetensors`.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    /// `best_confusion.json`: the confusion matrix (rows = ground truth) of the best
    /// validation, with its class names and per-class IoU.
    pub fn best_confusion(&self) -> PathBuf {
        self.dir.join("best_confusion.json")
    }
    /// The default TensorBoard folder.
    pub fn tensorboard(&self) -> PathBuf {
        self.dir.join("tensorboard")
    }

    /// Creates the folder, takes its writer lock (a second writer fails at once) and
    /// removes temporary files a killed writer left. `what` names the job in the
    /// lock message.
    pub(crate) fn open_writer(&self, what: &str) -> Result<FolderLock> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create run folder {}", self.dir.display()))?;
        let lock = FolderLock::acquire(&self.dir, what)?;
        crate::io::clean_temp_files(&self.dir)?;
        Ok(lock)
    }
}

/// A run's progress, saved inside its latest checkpoint (safetensors metadata under
/// [`STATE_KEY`]).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RunState {
    /// Iterations done.
    pub step: u64,
    /// Best validation mIoU.
    pub best_miou: Option<f64>,
    /// Iteration of the best validation.
    pub best_step: Option<u64>,
    /// The run this state belongs to (the config's run id).
    #[serde(default)]
    pub run_id: String,
    /// Length of `train_log.jsonl` when the checkpoint was made: a resume truncates the
    /// log there, so lines of iterations that are redone appear once.
    #[serde(default)]
    pub log_bytes: Option<u64>,
}

/// The prefix of the extra tensors a run's checkpoint carries besides the model (the
/// optimiser's state); loading a model ignores them.
pub const EXTRA_PREFIX: &str = "optim.";

/// The metadata key of [`RunState`] in a checkpoint.
pub const STATE_KEY: &str = "famix-train-state";

/// The run log (`train_log.jsonl`), opened for appending.
pub struct RunLog {
    file: std::fs::File,
}

impl RunLog {
    /// Opens the log for appending, first cutting it to `keep` bytes (the length
    /// recorded with the checkpoint a resume starts from).
    pub fn open(run: &RunFolder, keep: Option<u64>) -> Result<Self> {
        let p = run.log();
        let file =
            std::fs::OpenOptions::new().create(true).append(true).open(&p).with_context(|| format!("cannot open {}", p.display()))?;
        let len = file.metadata()?.len();
        if let Some(k) = keep.filter(|&k| k < len) {
            file.set_len(k).with_context(|| format!("cannot truncate {}", p.display()))?;
        }
        Ok(RunLog { file })
    }
    /// Makes the lines so far durable; returns the log's length.
    pub fn sync(&mut self) -> Result<u64> {
        self.file.sync_data()?;
        Ok(self.file.metadata()?.len())
    }
    /// Appends one line.
    pub fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}")?;
        self.file.flush()?;
        Ok(())
    }
}

/// A fresh id for a new run (time and process, hashed).
pub(crate) fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut r = crate::rng::Rng::derive(nanos as u64, &[std::process::id() as u64, (nanos >> 64) as u64]);
    format!("{:016x}", r.next_u64())
}

/// Reads a run's `config.json` into its configuration type, saying clearly when the
/// folder is not a run folder.
pub fn read_config<T: serde::de::DeserializeOwned>(run: &RunFolder) -> Result<T> {
    let p = run.config();
    if !p.exists() {
        crate::error::fail!(InvalidInput, run.dir(), "{} is not a famix run folder (no config.json)", run.dir().display());
    }
    crate::io::read_json(&p)
}

/// Where a diverged run can be continued from, in words: the run's latest checkpoint
/// if every tensor in it is finite (famix never writes one that is not, but an older
/// famix or a damaged disk might have), else that no finite checkpoint exists.
pub(crate) fn last_finite_checkpoint(run: &RunFolder) -> String {
    let latest = run.latest();
    if !latest.exists() {
        return "No checkpoint was written yet.".into();
    }
    let step = |f: &crate::io::archive::LoadedFile| {
        f.metadata.get(STATE_KEY).and_then(|j| serde_json::from_str::<RunState>(j).ok()).map(|s| s.step).unwrap_or(0)
    };
    match crate::io::archive::load_file(&latest) {
        Ok(f) => {
            let at = step(&f);
            let mut tensors: Vec<(String, tch::Tensor)> = f.into_map().into_iter().collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            match crate::io::weights::check_finite(&tensors) {
                Ok(()) => format!("The last checkpoint, {} (iteration {at}), holds only finite values.", latest.display()),
                Err(e) => format!("{} is not usable either ({e}): no finite checkpoint exists; start over with `force`.", latest.display()),
            }
        }
        Err(e) => format!("{} cannot be read ({e:#}): no usable checkpoint exists; start over with `force`.", latest.display()),
    }
}
