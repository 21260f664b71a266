//! `famix export`: a segmenter as an ONNX graph (see `famix::export`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use famix::export::{write_onnx, ExportOptions, ExportOutput};
use famix::model::checkpoint;

#[derive(Args)]
pub struct ExportArgs {
    /// famix checkpoint or reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output ONNX file
    #[arg(long)]
    out: PathBuf,
    /// ONNX opset (13-21)
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Fix the input height (default: dynamic)
    #[arg(long)]
    height: Option<i64>,
    /// Fix the input width (default: dynamic)
    #[arg(long)]
    width: Option<i64>,
    /// Graph output: logits (N, K, H, W) float32 or trainid (N, H, W) int64
    #[arg(long, value_parser = super::choice::<ExportOutput>(), default_value = "logits")]
    output: ExportOutput,
    /// Take uint8 RGB (N, H, W, 3) and normalise inside the graph (default input: float32 (N, 3, H, W) normalised with CLIP's mean/std)
    #[arg(long)]
    include_preprocessing: bool,
    /// Output stride 8, 16 or 32 (default: the checkpoint's; 16 for reference .pth files)
    #[arg(long)]
    output_stride: Option<i64>,
}

pub fn export(a: ExportArgs) -> Result<i32> {
    let os = a.output_stride.map(famix::clip::OutputStride::from_int).transpose()?;
    let loaded = checkpoint::load(&a.checkpoint, tch::Device::Cpu, os)?;
    let o = ExportOptions {
        opset: a.opset,
        height: a.height,
        width: a.width,
        output: a.output,
        include_preprocessing: a.include_preprocessing,
    };
    write_onnx(&loaded.model, &o, &a.out)?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "exported {} (OS{}, {} classes) → {} ({:.1} MB, opset {})",
        loaded.path.display(),
        loaded.model.config().output_stride.value(),
        loaded.model.config().head.num_classes,
        a.out.display(),
        size as f64 / 1e6,
        a.opset
    );
    println!("{}", a.out.display());
    Ok(0)
}
