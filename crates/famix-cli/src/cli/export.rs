//! `famix export`: a segmenter as an ONNX graph (see `famix::export`), and
//! `famix calibrate`: the activation ranges its int8 form needs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use famix::engine::calibration::{calibrate as run_calibration, Calibration};
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
    /// int8 convolutions (QDQ, for ONNX Runtime's integer kernels) quantised with the activation ranges in this file (from `famix calibrate`)
    #[arg(long, value_name = "CALIBRATION")]
    int8: Option<PathBuf>,
    #[command(flatten)]
    classes: super::ModelClassesArgs,
}

pub fn export(a: ExportArgs) -> Result<i32> {
    let os = a.output_stride.map(famix::clip::OutputStride::from_int).transpose()?;
    let loaded = checkpoint::load(&a.checkpoint, tch::Device::Cpu, os)?;
    a.classes.resolve(&loaded.model, &loaded.path)?;
    let int8 = match &a.int8 {
        Some(p) => {
            let c = Calibration::load(p)?;
            c.check_fits(&loaded.model)?;
            Some(c.ranges)
        }
        None => None,
    };
    let o = ExportOptions {
        opset: a.opset,
        height: a.height,
        width: a.width,
        output: a.output,
        include_preprocessing: a.include_preprocessing,
        int8,
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

#[derive(Args)]
pub struct CalibrateArgs {
    /// famix checkpoint or reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    /// Calibration images: files or folders (searched recursively) of the *source* domain (training or validation images), never the test domains
    #[arg(long, required = true, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Use at most this many images (the first in sorted order)
    #[arg(long, default_value_t = 32)]
    count: usize,
    /// Output stride 8, 16 or 32 (default: the checkpoint's); the calibration fits only this stride
    #[arg(long)]
    output_stride: Option<i64>,
    /// Output calibration file (JSON), for --int8 of predict, eval, serve, bench and export
    #[arg(long)]
    out: PathBuf,
}

pub fn calibrate(a: CalibrateArgs) -> Result<i32> {
    if a.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let os = a.output_stride.map(famix::clip::OutputStride::from_int).transpose()?;
    let loaded = checkpoint::load(&a.checkpoint, tch::Device::Cpu, os)?;
    let (items, _) = famix::data::collect_inputs(&a.images)?;
    let mut images: Vec<PathBuf> = items.into_iter().map(|(p, _)| p).filter(|p| !super::video::is_video(p)).collect();
    images.sort();
    images.truncate(a.count);
    let c = run_calibration(&loaded.model, &images, &loaded.path.display().to_string(), &super::progress::Bars::default())?;
    c.save(&a.out)?;
    eprintln!(
        "calibrated {} on {} images → {} ({} activation ranges)",
        loaded.path.display(),
        c.images,
        a.out.display(),
        c.ranges.ranges.len()
    );
    println!("{}", a.out.display());
    Ok(0)
}
