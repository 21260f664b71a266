//! Language-driven styles: prompts, patch-wise PIN, the mining run, the style bank
//! and local style mixing.
pub mod bank;
pub mod mining;
pub mod mixing;
pub(crate) mod pin;
pub mod prompts;

pub use pin::PinConfig;
