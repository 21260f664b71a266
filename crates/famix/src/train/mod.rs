//! Training a segmenter: what a run is ([`config`]), where it starts from and what a
//! checkpoint holds ([`state`]), one iteration ([`step`]) and the run loop with
//! validation, logging and checkpoints ([`run`]). Read bottom-up: config → state →
//! step → run.
pub mod config;
pub mod run;
pub mod state;
pub mod step;

pub use config::{check_config, RunOptions, TrainConfig, ValSpec};
pub use run::{train, TrainSummary};
pub use step::{bank_tables, Stepper};
