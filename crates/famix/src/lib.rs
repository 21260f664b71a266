//! famix: FAMix (Freeze, Augment and Mix; CVPR 2024) language-guided
//! domain-generalised semantic segmentation on libtorch.
//!
//! The method and how famix implements it are described in `docs/src/design.md`
//! (paper: <https://arxiv.org/abs/2311.17922>, reference code:
//! <https://github.com/astra-vision/FAMix>). Modules follow the method: [`clip`]
//! (image/text towers, tokenizer), [`model`] (DeepLabv3+ segmenter, checkpoints, the
//! inference API), [`style`] (prompts, patch-wise PIN, the style bank, local style
//! mixing), [`data`] (datasets, augmentation, loader), [`train`], [`eval`]. The
//! library never prints: long work reports through [`progress::Progress`], and
//! errors are [`Error`]s.
//!
//! # Segmenting an image
//!
//! ```
//! use famix::{Image8, PredictOptions, Segmenter};
//! # fn main() -> famix::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("famix-doctest-{}", std::process::id()));
//! # let checkpoint = famix::model::checkpoint::save_random_tiny(&dir.join("tiny"), 19)?;
//! // A famix checkpoint or a reference FAMix .pth file.
//! let model = Segmenter::load(&checkpoint, tch::Device::Cpu)?;
//! let image = Image8::new(96, 64, 3, 128); // or Image8::open_rgb("street.png")?
//! let pred = model.predict(&image, &PredictOptions::default())?;
//! assert_eq!((pred.train_ids.width, pred.train_ids.height), (96, 64));
//! assert!(pred.train_ids.data.iter().all(|&c| c < 19));
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod clip;
pub mod data;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod imageops;
pub mod io;
pub mod model;
pub(crate) mod names;
pub(crate) mod nn;
pub mod optim;
pub mod progress;
pub mod render;
pub mod report;
pub mod rng;
pub mod shard;
pub mod style;
pub mod train;

pub use error::{Error, ErrorKind, Result};
pub use imageops::Image8;
pub use model::{Precision, PredictOptions, Prediction, Segmenter};
pub use names::Named;
pub use progress::{Progress, Silent};
