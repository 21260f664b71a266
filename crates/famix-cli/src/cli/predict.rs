//! `famix predict` and `famix import-checkpoint`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use tch::{Device, Kind, Tensor};

use famix::clip::OutputStride;
use famix::data::collect_inputs;
use famix::data::prefetch::{default_workers, ordered_map};
use famix::data::staging::{same_size_batches, staged};
use famix::imageops::Image8;
use famix::model::checkpoint;
use famix::progress::{Progress, Unit};
use famix::render::write_outputs_as;
use famix::{PredictOptions, Segmenter};

use super::video::{is_video, predict_video, VideoJob};
use super::writers::Writers;

#[derive(Args)]
pub struct PredictArgs {
    /// famix checkpoint (.safetensors, or its stem) or a reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images, folders (searched recursively for .png/.jpg/.jpeg) or video files (.mp4/.mkv/.avi/.mov/.webm; needs ffmpeg)
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder: <stem>_trainid.png, <stem>_color.png (and <stem>_overlay.png); for videos <stem>_overlay.mp4
    #[arg(long)]
    out: PathBuf,
    /// Videos: also write the colour map as <stem>_color.mp4
    #[arg(long)]
    color_video: bool,
    /// Videos: also write every frame's PNGs as <stem>/<frame>_trainid.png, _color.png, _overlay.png
    #[arg(long)]
    frames: bool,
    /// Threads encoding and writing PNGs beside the model [default: cores / 2, at least 1]
    #[arg(long)]
    writers: Option<usize>,
    /// Also write the colour map blended over the photo
    #[arg(long)]
    overlay: bool,
    #[command(flatten)]
    test: super::TestTimeArgs,
    /// Id format of the label PNGs: trainid (STEM_trainid.png) or labelid (STEM_labelIds.png, Cityscapes label ids as the Cityscapes/ACDC benchmark servers expect)
    #[arg(long, value_parser = super::choice::<famix::render::IdFormat>(), default_value = "trainid")]
    label_format: famix::render::IdFormat,
    /// Images per forward pass (same-size images are batched)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    shard: super::ShardArgs,
    #[command(flatten)]
    classes: super::ModelClassesArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Where a batch's predictions go.
struct Sink<'a> {
    model: &'a Segmenter,
    opts: PredictOptions,
    out: &'a Path,
    stems: &'a [PathBuf],
    overlay: bool,
    format: famix::render::IdFormat,
    writers: &'a Writers,
}

impl Sink<'_> {
    /// Segments one staged batch (`x`: its u8 tensor on the device) and hands each
    /// image's outputs to the writer threads.
    fn segment(&self, indices: Vec<usize>, images: Vec<Image8>, x: Tensor) -> famix::Result<()> {
        let (ids, _) = self.model.predict_ids(&x, &self.opts)?;
        let ids = ids.to_kind(Kind::Uint8).to_device(Device::Cpu);
        for (k, (i, img)) in indices.into_iter().zip(images).enumerate() {
            let labels = Image8::from_tensor_u8(&ids.get(k as i64))?;
            let (stem, palette, overlay, format) =
                (self.out.join(&self.stems[i]), self.model.config().palette(), self.overlay, self.format);
            self.writers
                .submit(Box::new(move || write_outputs_as(&stem, &img, &labels, &palette, overlay, format)))
                .map_err(|e| famix::Error::msg(format!("{e:#}")))?;
        }
        Ok(())
    }
}

/// Without --engine, `predict` uses `auto` for this many images or more (or any
/// video), libtorch below.
const AUTO_ENGINE_MIN_IMAGES: usize = 16;

pub fn predict(a: PredictArgs) -> Result<i32> {
    let opts = a.test.predict_options()?;
    // Videos go through the same listing, so their output names are deduplicated with
    // the images' (two `clip.mp4` from different folders do not overwrite each other).
    let (mut items, notes) = collect_inputs(&a.inputs)?;
    if items.is_empty() {
        bail!("no .png/.jpg images or videos found in the inputs");
    }
    if let Some(sh) = a.shard.shard()? {
        let all = items.len();
        items = sh.select(all).into_iter().map(|i| items[i].clone()).collect();
        eprintln!("shard {sh}: {} of {all} inputs", items.len());
    }
    let (videos, items): (Vec<_>, Vec<_>) = items.into_iter().partition(|(p, _)| p.is_file() && is_video(p));
    for n in &notes {
        eprintln!("note: {n}");
    }
    let loaded = checkpoint::load(&a.checkpoint, a.device.device, a.test.output_stride()?)?;
    a.classes.resolve(&loaded.model, &loaded.path)?;
    // Label ids exist for Cityscapes' train ids (all 19, or the first ones of a model
    // with fewer classes and the default names).
    let names = loaded.model.config().class_names();
    let cityscapes = names.len() <= 19 && names.iter().zip(famix::data::labels::CITYSCAPES_CLASSES).all(|(n, c)| n == c);
    if a.label_format == famix::render::IdFormat::Labelid && !cityscapes {
        anyhow::bail!(
            "--label-format labelid writes Cityscapes label ids, but {} predicts other classes: use trainid",
            loaded.path.display()
        );
    }
    let mut model = loaded.model;
    // Building an ONNX Runtime session costs about 2 s (RN50): by default it is used
    // only for jobs long enough to win that back.
    let long_job = !videos.is_empty() || items.len() >= AUTO_ENGINE_MIN_IMAGES;
    let default_engine = if long_job { famix::engine::Engine::Auto } else { famix::engine::Engine::Torch };
    a.test.prepare(&mut model, default_engine)?;
    std::fs::create_dir_all(&a.out)?;
    let mut failed = if items.is_empty() { 0 } else { predict_images(&a, &model, opts.clone(), items)? };
    let job = VideoJob { model: &model, opts, batch: a.batch, color_video: a.color_video, frames: a.frames, format: a.label_format };
    for (v, stem) in &videos {
        match predict_video(&job, v, &a.out, stem) {
            Ok(n) => eprintln!("{}: {n} frames → {}", v.display(), a.out.join(stem).display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 2 } else { 0 })
}

/// Images through the overlapped pipeline: decoding on loader threads, the model here,
/// PNG encoding on writer threads. Returns the number of images that failed.
fn predict_images(a: &PredictArgs, model: &Segmenter, opts: PredictOptions, items: Vec<(PathBuf, PathBuf)>) -> Result<usize> {
    let (paths, stems): (Vec<PathBuf>, Vec<PathBuf>) = items.into_iter().unzip();
    let shared = Arc::new(paths);
    let p2 = shared.clone();
    let decoded = ordered_map(shared.len(), default_workers(), 8, move |i| Image8::open_rgb(&p2[i]));
    let bars = super::progress::Bars::default();
    bars.start("predict", shared.len() as u64, 0, Unit::Items);
    let opts_scale = opts.scale;
    let writers =
        Writers::new(a.writers.unwrap_or_else(|| (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) / 2).max(1)));
    let sink = Sink { model, opts, out: &a.out, stems: &stems, overlay: a.overlay, format: a.label_format, writers: &writers };
    let failed = std::sync::atomic::AtomicUsize::new(0);
    // Decoding (worker threads) → size check → same-size batches → staged on the device
    // by a producer thread while the model runs the previous batch.
    let config = model.config();
    let readable = decoded.enumerate().filter_map(|(i, res)| {
        bars.advance(1);
        let res = res.and_then(|img| config.check_size(img.width as i64, img.height as i64, opts_scale).map(|_| img));
        match res {
            Ok(img) => Some((i, img)),
            Err(e) => {
                bars.notice(&format!("skipping {}: {e:#}", shared[i].display()));
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    });
    staged(same_size_batches(readable, a.batch.max(1)), model.device(), 2, |idx, imgs, x| sink.segment(idx, imgs, x))?;
    let failed = failed.into_inner();
    writers.finish()?;
    bars.finish();
    eprintln!("{} predictions written to {} ({} failed)", shared.len() - failed, a.out.display(), failed);
    Ok(failed)
}

#[derive(Args)]
pub struct ImportArgs {
    /// Reference FAMix checkpoint (*.pth: a dict with model_state) or a bare segmenter state dict
    reference: PathBuf,
    /// Output famix checkpoint (.safetensors; a .json header is written beside it)
    #[arg(long)]
    out: PathBuf,
    /// Output stride the model was trained with (reference checkpoints do not record it)
    #[arg(long, default_value_t = 16)]
    output_stride: i64,
}

pub fn import(a: ImportArgs) -> Result<i32> {
    let os = OutputStride::from_int(a.output_stride)?;
    let sd = famix::clip::StateDict::load(&a.reference)?;
    let (model, meta) = checkpoint::import_state(&sd, Device::Cpu, os)?;
    let path = checkpoint::save(&model, &meta, &a.out)?;
    let c = &model.config();
    eprintln!(
        "imported {}: CLIP ResNet layers {:?} width {}, {} classes, OS{}, step {}, best mIoU {}",
        a.reference.display(),
        c.backbone.layers,
        c.backbone.width,
        c.head.num_classes,
        c.output_stride.value(),
        meta.step,
        meta.best_miou.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
    );
    println!("{}", path.display());
    Ok(0)
}
