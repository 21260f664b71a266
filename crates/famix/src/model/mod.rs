//! The FAMix segmenter (CLIP ResNet + DeepLabv3+), freeze policies, checkpoints and
//! the inference API.
pub mod checkpoint;
pub(crate) mod deeplab;
pub mod inference;
pub(crate) mod segmenter;

pub use checkpoint::CheckpointMeta;
pub use deeplab::HeadConfig;
pub use inference::{Precision, PredictOptions, Prediction};
pub use segmenter::{FreezePolicy, ModelStamp, ParamGroups, Segmenter, SegmenterConfig};
