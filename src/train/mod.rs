//! Training: optimiser, schedule and the FAMix training loop.
pub mod sgd;
