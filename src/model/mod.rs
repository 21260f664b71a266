//! The FAMix segmenter (CLIP ResNet + DeepLabv3+), freeze policies and checkpoints.
pub mod checkpoint;
pub mod deeplab;
pub mod segmenter;

pub use checkpoint::CheckpointMeta;
pub use deeplab::HeadConfig;
pub use segmenter::{FreezePolicy, Segmenter, SegmenterConfig};
