//! Training a segmenter: what a run is (`config`), where it starts from and what a
//! checkpoint holds (`state`), one iteration (`step`) and the run loop with
//! validation, logging and checkpoints (`run`); every setting a user gives a run is
//! declared once in [`settings`]. Read bottom-up: config → settings → state → step →
//! run.
pub(crate) mod config;
pub(crate) mod run;
pub mod settings;
pub(crate) mod state;
pub(crate) mod step;

pub use config::{check_config, RunOptions, TrainConfig, ValSpec};
pub use run::{train, TrainSummary};
pub use settings::{Given, Setting, SETTINGS};
pub use step::{bank_tables, Stepper};
