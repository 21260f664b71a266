//! `famix predict` and `famix import-checkpoint`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use tch::{Device, Kind, Tensor};

use crate::clip::preprocess::normalize_u8;
use crate::clip::OutputStride;
use crate::data::collect_inputs;
use crate::data::prefetch::{default_workers, ordered_map};
use crate::device::parse_device;
use crate::imageops::Image8;
use crate::model::checkpoint;

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
    /// Images per forward pass (same-size images are batched)
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    device: String,
}

pub fn predict(a: PredictArgs) -> Result<i32> {
    let os = a.test.output_stride()?;
    let device = parse_device(&a.device)?;
    let loaded = checkpoint::load(&a.checkpoint, device, os)?;
    let model = loaded.model;
    let items = collect_inputs(&a.inputs)?;
    if items.is_empty() {
        bail!("no .png/.jpg images found in the inputs");
    }
    std::fs::create_dir_all(&a.out)?;
    let paths: Vec<PathBuf> = items.iter().map(|(p, _)| p.clone()).collect();
    let decoded = ordered_map(paths.len(), default_workers(), 8, move |i| Image8::open_rgb(&paths[i]));
    let bar = super::progress_bar(items.len() as u64, "predict");
    let _amp = crate::device::Autocast::new(device, a.test.bf16());
    let palette = model.config.palette.clone();
    let mut failed = 0usize;
    let mut batch: Vec<(usize, Image8)> = Vec::new();
    let flush = |batch: &mut Vec<(usize, Image8)>| -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let x = Tensor::stack(&batch.iter().map(|(_, im)| im.to_tensor_u8()).collect::<Vec<_>>(), 0);
        let x = normalize_u8(&x, device);
        let logits = model.predict_logits(&x, a.test.scale, a.test.ensemble);
        let pred = logits.argmax(1, false).to_kind(Kind::Uint8).to_device(Device::Cpu);
        for (k, (i, img)) in batch.iter().enumerate() {
            let labels = Image8::from_tensor_u8(&pred.get(k as i64))?;
            write_outputs(&a.out.join(&items[*i].1), img, &labels, &palette, a.overlay)?;
        }
        batch.clear();
        Ok(())
    };
    for (i, res) in decoded.enumerate() {
        match res {
            Ok(img) => {
                if batch.first().is_some_and(|(_, b)| (b.width, b.height) != (img.width, img.height))
                    || batch.len() >= a.batch.max(1)
                {
                    flush(&mut batch)?;
                }
                batch.push((i, img));
            }
            Err(e) => {
                bar.suspend(|| eprintln!("skipping {}: {e:#}", items[i].0.display()));
                failed += 1;
            }
        }
        bar.inc(1);
    }
    flush(&mut batch)?;
    bar.finish_and_clear();
    eprintln!("{} predictions written to {} ({} failed)", items.len() - failed, a.out.display(), failed);
    Ok(if failed > 0 { 2 } else { 0 })
}

/// Colour map of train ids (255 → black).
pub fn colorize(labels: &Image8, palette: &[[u8; 3]]) -> Image8 {
    let mut out = Image8::new(labels.width, labels.height, 3, 0);
    for (i, &l) in labels.data.iter().enumerate() {
        if let Some(c) = palette.get(l as usize) {
            out.data[i * 3..i * 3 + 3].copy_from_slice(c);
        }
    }
    out
}

/// Writes `<stem>_trainid.png`, `<stem>_color.png` and optionally `<stem>_overlay.png`.
pub fn write_outputs(stem: &std::path::Path, img: &Image8, labels: &Image8, palette: &[[u8; 3]], overlay: bool) -> Result<()> {
    let name = stem.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let dir = stem.parent().unwrap_or(std::path::Path::new(""));
    std::fs::create_dir_all(dir)?;
    labels.save_png(&dir.join(format!("{name}_trainid.png")))?;
    let color = colorize(labels, palette);
    color.save_png(&dir.join(format!("{name}_color.png")))?;
    if overlay {
        let mut o = img.clone();
        for (p, c) in o.data.iter_mut().zip(&color.data) {
            *p = ((*p as u16 + *c as u16 + 1) / 2) as u8;
        }
        o.save_png(&dir.join(format!("{name}_overlay.png")))?;
    }
    Ok(())
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
    let sd = crate::clip::StateDict::load(&a.reference)?;
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
