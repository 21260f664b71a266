//! Training: optimiser, schedule and the FAMix training loop.
pub mod trainer;

pub use trainer::{train, RunOptions, TrainConfig, TrainSummary, ValSpec};
