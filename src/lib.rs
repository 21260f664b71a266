//! famix: FAMix (Freeze, Augment and Mix; CVPR 2024) language-guided
//! domain-generalised semantic segmentation on libtorch.
//!
//! Modules follow the method: [`clip`] (image/text towers, tokenizer, weight
//! import), [`model`] (DeepLabv3+ segmenter and checkpoints), [`style`] (prompts,
//! style mining, the style bank, local style mixing), [`data`] (datasets,
//! augmentation, loader), [`train`], [`eval`], and [`cli`].

pub mod bench;
pub mod cli;
pub mod clip;
pub mod data;
pub mod device;
pub mod eval;
pub mod imageops;
pub mod io;
pub mod model;
pub mod nn;
pub mod rng;
pub mod style;
pub mod train;
