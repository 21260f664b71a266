//! The FAMix segmenter (CLIP ResNet + DeepLabv3+), freeze policies, checkpoints and
//! the inference API.
pub mod checkpoint;
pub mod deeplab;
pub mod inference;
pub mod segmenter;

pub use checkpoint::CheckpointMeta;
pub use deeplab::HeadConfig;
pub use inference::{Precision, PredictOptions, Prediction};
pub use segmenter::{FreezePolicy, ModelStamp, ParamGroups, Segmenter, SegmenterConfig};
