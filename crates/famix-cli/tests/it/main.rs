//! famix's integration tests, one binary (one link against libtorch instead of one per
//! file). Each module is one area; `make check` runs the fast ones by module name
//! (`cargo test --test it -- MODULE::`), `make test` all of them.

mod common;

mod bench;
mod cancel;
mod classes;
mod clip_image;
mod clip_text;
mod crash;
mod data;
mod demo;
mod docs;
mod download;
mod engine;
mod export;
mod fuzz;
mod hostile;
mod hygiene;
mod optim;
mod pretrain;
mod protocols;
mod quiet;
mod report;
mod segmenter;
mod serve;
mod shard;
mod styles;
mod synth;
mod train;
mod video;
