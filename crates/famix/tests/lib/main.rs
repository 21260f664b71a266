//! The library's integration tests, one binary (one link against libtorch): the
//! public API as a library user calls it (`library`), the segmenter against PyTorch's
//! reference numbers (`segmenter`), the inference fast path (`fastpath`). Tests that
//! run the `famix` command live with it in `crates/famix-cli/tests/it`.

mod common;

mod fastpath;
mod library;
mod segmenter;
