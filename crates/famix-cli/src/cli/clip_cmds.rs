//! CLIP subcommands: encode-image, encode-text, tokenize, zero-shot, download-clip.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use tch::{Kind, Tensor};

use famix::clip::preprocess::preprocess;
use famix::clip::tokenizer::{Tokenizer, CONTEXT_LENGTH};
use famix::clip::{download as dl, l2_normalize, Clip, OutputStride};
use famix::imageops::Image8;
use famix::style::prompts::{PromptEmbedder, PromptSet};

#[derive(Args)]
pub struct EncodeImageArgs {
    /// CLIP checkpoint: OpenAI TorchScript (RN50.pt), open_clip state dict (.pt/.bin) or .safetensors (optionally .gz)
    #[arg(long)]
    clip: PathBuf,
    /// Images (PNG/JPEG)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// L2-normalise the embeddings
    #[arg(long)]
    normalize: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn encode_image(a: EncodeImageArgs) -> Result<i32> {
    let device = a.device.device;
    let clip = Clip::load(&a.clip, device, OutputStride::Os32)?;
    let res = clip.visual.config.input_resolution as usize;
    for_each_image(&a.images, |path, img| {
        let x = preprocess(&img, res, device);
        let mut e = clip.encode_image(&x)?;
        if a.normalize {
            e = l2_normalize(&e);
        }
        println!("{}", json!({"image": path.display().to_string(), "embedding": to_vec(&e.get(0))?}));
        Ok(())
    })
}

/// Runs `f` on every readable image of `paths`, skipping (and reporting) unreadable
/// ones; the exit code is 2 when any was skipped.
fn for_each_image(paths: &[PathBuf], mut f: impl FnMut(&Path, Image8) -> Result<()>) -> Result<i32> {
    let mut failed = 0;
    for path in paths {
        match Image8::open_rgb(path) {
            Ok(img) => f(path, img)?,
            Err(e) => {
                eprintln!("skipping {}: {e:#}", path.display());
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 2 } else { 0 })
}

pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(t.to_device(tch::Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?)
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Texts to tokenize
    #[arg(required = true)]
    texts: Vec<String>,
    /// Print the zero-padded context-length form
    #[arg(long)]
    pad: bool,
    /// Truncate texts longer than the context (keeping the end token) instead of failing
    #[arg(long)]
    truncate: bool,
    /// Context length
    #[arg(long, default_value_t = CONTEXT_LENGTH)]
    context_length: usize,
}

pub fn tokenize(a: TokenizeArgs) -> Result<i32> {
    let tok = Tokenizer::global();
    if a.pad {
        famix::clip::tokenizer::check_context(a.context_length)?;
    }
    for t in &a.texts {
        let mut ids = tok.tokenize(t, a.context_length, a.truncate)?;
        if a.pad {
            ids.resize(a.context_length, 0);
        }
        println!("{}", json!({"text": t, "ids": ids}));
    }
    Ok(0)
}

#[derive(Args)]
pub struct EncodeTextArgs {
    /// CLIP checkpoint with a text tower
    #[arg(long)]
    clip: PathBuf,
    /// Texts (with templates: class names / prompts put into each template)
    #[arg(required = true)]
    texts: Vec<String>,
    /// default: average over CLIP's 80 ImageNet templates (as FAMix); none: the text as
    /// is; FILE: a JSON list of templates with '{}' or a prompts JSON with "templates"
    #[arg(long, default_value = "none")]
    templates: String,
    /// L2-normalise the embeddings
    #[arg(long)]
    normalize: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn templates_from_arg(arg: &str) -> Result<Vec<String>> {
    match arg {
        "none" => Ok(vec![]),
        "default" => Ok(PromptSet::default().templates),
        path => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read templates file {path}"))?;
            let list: Vec<String> = match serde_json::from_str::<Vec<String>>(&text) {
                Ok(l) => l,
                Err(_) => PromptSet::from_file(std::path::Path::new(path))?.templates,
            };
            if list.is_empty() || list.iter().any(|t| !t.contains("{}")) {
                anyhow::bail!("{path}: templates must be a non-empty list of strings with '{{}}'");
            }
            Ok(list)
        }
    }
}

pub fn encode_text(a: EncodeTextArgs) -> Result<i32> {
    let device = a.device.device;
    let clip = Clip::load(&a.clip, device, OutputStride::Os32)?;
    let templates = templates_from_arg(&a.templates)?;
    let emb = PromptEmbedder::new(&clip, templates)?;
    for t in &a.texts {
        let mut e = emb.embed_mean(t)?;
        if a.normalize {
            e = &e / e.norm();
        }
        println!("{}", json!({"text": t, "embedding": to_vec(&e)?}));
    }
    Ok(0)
}

#[derive(Args)]
pub struct ZeroShotArgs {
    /// CLIP checkpoint with both towers
    #[arg(long)]
    clip: PathBuf,
    /// Comma-separated labels, e.g. "a dog,a cat,a car"
    #[arg(long)]
    labels: String,
    /// Images (PNG/JPEG)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Templates for the labels: default (80 ImageNet templates), none, or FILE
    #[arg(long, default_value = "default")]
    templates: String,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn zero_shot(a: ZeroShotArgs) -> Result<i32> {
    let device = a.device.device;
    let clip = Clip::load(&a.clip, device, OutputStride::Os32)?;
    let labels: Vec<String> = a.labels.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if labels.len() < 2 {
        anyhow::bail!("--labels needs at least two comma-separated labels");
    }
    let mut emb = PromptEmbedder::new(&clip, templates_from_arg(&a.templates)?)?;
    let text = Tensor::stack(&labels.iter().map(|l| emb.embed(l)).collect::<famix::Result<Vec<_>>>()?, 0);
    let scale = clip.logit_scale.unwrap_or((1.0f64 / 0.07).ln()).exp();
    let res = clip.visual.config.input_resolution as usize;
    for_each_image(&a.images, |path, img| {
        let im = l2_normalize(&clip.encode_image(&preprocess(&img, res, device))?);
        let probs = (im.matmul(&text.tr()) * scale).softmax(-1, Kind::Float).get(0);
        let p = to_vec(&probs)?;
        let best = p.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(i, _)| i).unwrap_or(0);
        let map: serde_json::Map<String, serde_json::Value> = labels.iter().zip(&p).map(|(l, v)| (l.clone(), json!(v))).collect();
        println!("{}", json!({"image": path.display().to_string(), "label": labels[best], "probs": map}));
        Ok(())
    })
}

#[derive(Args)]
pub struct DownloadArgs {
    /// Model: RN50, RN101, RN50x4, RN50x16 or RN50x64
    model: String,
    /// Cache folder (default: ~/.cache/clip, shared with OpenAI's clip package)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Mirror base URL (files at BASE/<sha256>/<name>.pt)
    #[arg(long, default_value = dl::OPENAI_BASE)]
    base_url: String,
}

pub fn download(a: DownloadArgs) -> Result<i32> {
    let dir = a.dir.unwrap_or_else(dl::default_cache_dir);
    let path = dl::download(&a.model, &dir, &a.base_url, &super::progress::Bars::default())?;
    println!("{}", path.display());
    Ok(0)
}
