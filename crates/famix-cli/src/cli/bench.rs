//! `famix bench`.

use anyhow::{bail, Result};
use clap::Args;

use super::bench_run::{bench_infer, bench_loader, bench_mine, bench_train, Arch, BenchConfig};
use famix::data::prefetch::default_workers;

#[derive(Args)]
pub struct BenchArgs {
    /// Workloads: train, infer, mine, loader (comma-separated)
    #[arg(long, default_value = "train,infer,mine")]
    what: String,
    /// Model size (random weights): rn50, rn101, tiny
    #[arg(long, value_enum, default_value = "rn50")]
    arch: Arch,
    /// Training batch (and loader batch)
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Training crop
    #[arg(long, default_value_t = 768)]
    crop: usize,
    /// Inference input HxW
    #[arg(long, default_value = "1024x2048")]
    infer_size: String,
    /// Mining batch (crops)
    #[arg(long, default_value_t = 16)]
    mine_batch: usize,
    /// Mining crop size
    #[arg(long, default_value_t = 768)]
    mine_crop: usize,
    /// PIN iterations per mining batch
    #[arg(long, default_value_t = 100)]
    mine_iters: usize,
    /// Untimed warm-up repetitions per workload
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed repetitions per workload
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// bf16 autocast
    #[arg(long, value_parser = super::choice::<famix::Precision>(), default_value = "fp32")]
    amp: famix::Precision,
    /// One JSON line per workload
    #[arg(long)]
    json: bool,
    /// Loader threads (default: cores - 1)
    #[arg(long)]
    workers: Option<usize>,
    /// Inference on the plain path (conv then batch norm) instead of the fast path
    #[arg(long, alias = "no-fuse")]
    no_fold: bool,
    /// Inference with this checkpoint (e.g. the demo's trained one) instead of random weights; with --amp bf16, fp32_agreement is measured on it
    #[arg(long)]
    checkpoint: Option<std::path::PathBuf>,
    /// Inference input: an image (resized to --infer-size) instead of random pixels
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// Inference engines to time, comma-separated: torch, onnxruntime, auto; `all` (the default) is every engine that runs the device and --amp (onnxruntime: CPU, fp32, when installed), one result each
    #[arg(long, default_value = "all")]
    engine: String,
    /// Also time int8 inference on ONNX Runtime (CPU), with fp32_agreement against libtorch fp32: with the activation ranges of this calibration (`famix calibrate`; with --checkpoint), or, given without a file, ranges measured on the timed input itself (for speed only)
    #[arg(long, value_name = "CALIBRATION", num_args = 0..=1, default_missing_value = "")]
    int8: Option<String>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn bench(a: BenchArgs) -> Result<i32> {
    let device = a.device.device;
    let (h, w) = match a.infer_size.split_once('x') {
        Some((h, w)) => (h.trim().parse()?, w.trim().parse()?),
        None => bail!("--infer-size must look like 1024x2048"),
    };
    let cfg = BenchConfig {
        arch: a.arch,
        device,
        batch: a.batch,
        crop: a.crop,
        infer_size: (h, w),
        mine_batch: a.mine_batch,
        mine_crop: a.mine_crop,
        mine_iters: a.mine_iters,
        warmup: a.warmup,
        iters: a.iters,
        precision: a.amp,
        workers: a.workers.unwrap_or_else(default_workers),
        no_fold: a.no_fold,
        checkpoint: a.checkpoint.clone(),
        image: a.image.clone(),
        engine: famix::engine::Engine::Torch,
        int8: None,
    };
    let engines = engines(&a.engine, device, a.amp)?;
    if a.int8.is_some() && (device != tch::Device::Cpu || a.amp != famix::Precision::Fp32) {
        bail!("--int8 runs on the CPU (ONNX Runtime) and excludes --amp bf16");
    }
    if !a.crop.is_multiple_of(4) || !a.mine_crop.is_multiple_of(12) {
        bail!("--crop must be divisible by 4 and --mine-crop by 12 (4 × the 3x3 style grid)");
    }
    famix::device::tune_for_repeated_sizes(device);
    let tmp = tempdir()?;
    for what in a.what.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        super::bench_run::reset_peak_rss();
        let results = match what {
            "infer" => {
                let mut r =
                    engines.iter().map(|&engine| bench_infer(&BenchConfig { engine, ..cfg.clone() })).collect::<Result<Vec<_>>>()?;
                if let Some(c) = &a.int8 {
                    r.push(bench_infer(&BenchConfig { int8: Some(c.into()), ..cfg.clone() })?);
                }
                r
            }
            "train" => vec![bench_train(&cfg, &tmp)?],
            "mine" => vec![bench_mine(&cfg)?],
            "loader" => vec![bench_loader(&cfg, &tmp)?],
            other => bail!("unknown workload {other:?} (train, infer, mine, loader)"),
        };
        for mut r in results {
            r.peak_rss_mb = super::bench_run::peak_rss_mb();
            print_result(&r, a.json)?;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(0)
}

/// The engines of `--engine` (`all`: those that run `device` at `precision`).
fn engines(spec: &str, device: tch::Device, precision: famix::Precision) -> Result<Vec<famix::engine::Engine>> {
    use famix::engine::Engine;
    use famix::Named;
    if spec.trim() == "all" {
        let ort = device == tch::Device::Cpu && precision == famix::Precision::Fp32;
        if ort && !famix::engine::onnxruntime::available() {
            eprintln!("note: ONNX Runtime is not installed (`make setup`); timing libtorch only");
            return Ok(vec![Engine::Torch]);
        }
        return Ok(if ort { vec![Engine::Torch, Engine::OnnxRuntime] } else { vec![Engine::Torch] });
    }
    spec.split(',')
        .map(|s| Engine::parse(s.trim()).ok_or_else(|| anyhow::anyhow!("--engine: unknown engine {s:?} (torch, onnxruntime, auto, all)")))
        .collect()
}

fn print_result(r: &super::bench_run::BenchResult, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{:<7} {:<10} {}{} {}x{} batch {}: median {:.1} ms (min {:.1}, max {:.1}), {:.1} images/s{}",
            r.what,
            r.device,
            r.amp,
            r.engine.as_ref().map(|e| format!(" {e}")).unwrap_or_default(),
            r.height,
            r.width,
            r.batch,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.images_per_s,
            r.peak_mem_mb.map(|m| format!(", peak {m:.0} MiB")).unwrap_or_default()
        );
    }
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("famix-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
