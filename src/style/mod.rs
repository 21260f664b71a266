//! Language-driven styles: prompts, mining (patch-wise PIN), the style bank and
//! local style mixing.
pub mod bank;
pub mod mixing;
pub mod mining;
pub mod prompts;
