//! `famix predict` and `famix import-checkpoint`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use tch::{Device, Kind, Tensor};

use famix::clip::OutputStride;
use famix::data::collect_inputs;
use famix::data::prefetch::{default_workers, ordered_map};
use famix::imageops::Image8;
use famix::model::checkpoint;
use famix::progress::{Progress, Unit};
use famix::render::write_outputs_as;
use famix::{PredictOptions, Segmenter};

#[derive(Args)]
pub struct PredictArgs {
    /// famix checkpoint (.safetensors, or its stem) or a reference FAMix .pth
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images or folders (searched recursively for .png/.jpg/.jpeg)
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder: <stem>_trainid.png, <stem>_color.png (and <stem>_overlay.png)
    #[arg(long)]
    out: PathBuf,
    /// Also write the colour map blended over the photo
    #[arg(long)]
    overlay: bool,
    #[command(flatten)]
    test: super::TestTimeArgs,
    /// Id format of the label PNGs: trainid (<stem>_trainid.png) or labelid (<stem>_labelIds.png, Cityscapes label ids as the Cityscapes/ACDC benchmark servers expect)
    #[arg(long, value_enum, default_value = "trainid")]
    label_format: famix::render::IdFormat,
    /// Images per forward pass (same-size images are batched)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    shard: super::ShardArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Same-size decoded images waiting for one forward pass.
struct Pending<'a> {
    model: &'a Segmenter,
    opts: PredictOptions,
    out: &'a Path,
    stems: &'a [PathBuf],
    overlay: bool,
    format: famix::render::IdFormat,
    batch: Vec<(usize, Image8)>,
}

impl Pending<'_> {
    /// Segments the pending images (one forward pass) and writes their outputs.
    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let x = Tensor::stack(&self.batch.iter().map(|(_, im)| im.to_tensor_u8()).collect::<Vec<_>>(), 0);
        let (ids, _) = self.model.predict_ids(&x, &self.opts)?;
        let ids = ids.to_kind(Kind::Uint8).to_device(Device::Cpu);
        let palette = &self.model.config.palette;
        for (k, (i, img)) in self.batch.iter().enumerate() {
            let labels = Image8::from_tensor_u8(&ids.get(k as i64))?;
            write_outputs_as(&self.out.join(&self.stems[*i]), img, &labels, palette, self.overlay, self.format)?;
        }
        self.batch.clear();
        Ok(())
    }
}

pub fn predict(a: PredictArgs) -> Result<i32> {
    let opts = a.test.predict_options()?;
    let model = checkpoint::load(&a.checkpoint, a.device.device, a.test.output_stride()?)?.model;
    let (mut items, notes) = collect_inputs(&a.inputs)?;
    if items.is_empty() {
        bail!("no .png/.jpg images found in the inputs");
    }
    if let Some(sh) = a.shard.shard()? {
        let all = items.len();
        items = sh.select(all).into_iter().map(|i| items[i].clone()).collect();
        eprintln!("shard {sh}: {} of {all} images", items.len());
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    std::fs::create_dir_all(&a.out)?;
    let (paths, stems): (Vec<PathBuf>, Vec<PathBuf>) = items.into_iter().unzip();
    let shared = Arc::new(paths);
    let p2 = shared.clone();
    let decoded = ordered_map(shared.len(), default_workers(), 8, move |i| Image8::open_rgb(&p2[i]));
    let bars = super::progress::Bars::default();
    bars.start("predict", shared.len() as u64, 0, Unit::Items);
    let opts_scale = opts.scale;
    let mut pending =
        Pending { model: &model, opts, out: &a.out, stems: &stems, overlay: a.overlay, format: a.label_format, batch: Vec::new() };
    let mut failed = 0usize;
    for (i, res) in decoded.enumerate() {
        let res = res.map_err(anyhow::Error::from).and_then(|img| {
            model.check_size(img.width as i64, img.height as i64, opts_scale)?;
            Ok(img)
        });
        match res {
            Ok(img) => {
                let other_size = pending.batch.first().is_some_and(|(_, b)| (b.width, b.height) != (img.width, img.height));
                if other_size || pending.batch.len() >= a.batch.max(1) {
                    pending.flush()?;
                }
                pending.batch.push((i, img));
            }
            Err(e) => {
                bars.notice(&format!("skipping {}: {e:#}", shared[i].display()));
                failed += 1;
            }
        }
        bars.advance(1);
    }
    pending.flush()?;
    bars.finish();
    eprintln!("{} predictions written to {} ({} failed)", shared.len() - failed, a.out.display(), failed);
    Ok(if failed > 0 { 2 } else { 0 })
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
    let c = &model.config;
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
