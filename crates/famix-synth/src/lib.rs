//! A procedural driving world for `famix demo`, `famix data synth` and tests.
//!
//! Street scenes in perspective ([`scene`], [`layout`]) with 17 of Cityscapes' 19
//! classes, rendered under *conditions* ([`look`]): day (the demo's source), dusk,
//! night, fog, rain and snow as physically motivated changes of light and weather,
//! plus ten photographic *styles* — stand-ins for the FAMix paper's style vocabulary
//! (sepia, over-exposed, painterly, monochrome, vintage, noir, misty, neon, pastel,
//! pop art) — that exist only in the demo CLIP's captioned world ([`caption`]). A
//! layout's labels do not depend on the condition, so a condition's images are the
//! same scenes as the source's, seen differently — what domain generalisation is
//! about.
//!
//! Randomness is derived from (seed, purpose, set, index): a layout from
//! (`SYNTH_LAYOUT`, split, index) for segmentation sets and (`SYNTH_CAPTIONED`,
//! index) for the captioned set, so the two never share layouts; a rendering from
//! (`SYNTH_RENDER`, set, split, index, condition).

pub mod caption;
pub mod layout;
pub mod look;
pub mod scene;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use famix::error::{Context, Error, Result};
use famix::imageops::Image8;
use famix::rng::{stream, Rng};

/// A way the world can look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// Sunny daylight (the demo's source domain).
    Day,
    /// Low warm light, lamps coming on.
    Dusk,
    /// Darkness, light sources, sensor noise.
    Night,
    /// Contrast falling with depth.
    Fog,
    /// Overcast, wet reflective ground, streaks.
    Rain,
    /// Whitened ground and tops, flakes.
    Snow,
    /// Style: sepia toning (the paper's "Rustic Charm").
    Sepia,
    /// Style: over-exposure.
    Overexposed,
    /// Style: painterly smoothing and posterisation (the paper's "Watercolor Serenity").
    Painterly,
    /// Style: black and white (the paper's "Monochrome Elegance").
    Monochrome,
    /// Style: faded, warm, vignetted (the paper's "Retro Futurism").
    Vintage,
    /// Style: dark, hard-contrast black and white (the paper's "Dystopian Noir", "Haunting Shadows").
    Noir,
    /// Style: a uniform luminous haze with glow (the paper's "Ethereal Mist").
    Misty,
    /// Style: dark magenta/cyan split toning with glowing brights (the paper's "Cyberpunk Cityscape").
    Neon,
    /// Style: light, soft, desaturated pinks and mints (the paper's "Pastel Dreams").
    Pastel,
    /// Style: flat posterised saturated colours (the paper's "Pop Art Popularity", "Vibrant Graffiti").
    PopArt,
}

impl Condition {
    /// Every condition and style.
    pub const ALL: [Condition; 16] = [
        Condition::Day,
        Condition::Dusk,
        Condition::Night,
        Condition::Fog,
        Condition::Rain,
        Condition::Snow,
        Condition::Sepia,
        Condition::Overexposed,
        Condition::Painterly,
        Condition::Monochrome,
        Condition::Vintage,
        Condition::Noir,
        Condition::Misty,
        Condition::Neon,
        Condition::Pastel,
        Condition::PopArt,
    ];
    /// The driving conditions.
    pub const DRIVING: [Condition; 6] =
        [Condition::Day, Condition::Dusk, Condition::Night, Condition::Fog, Condition::Rain, Condition::Snow];

    /// Whether this is a photographic style (a treatment of the day image) rather than
    /// a driving condition.
    pub fn is_style(self) -> bool {
        !Condition::DRIVING.contains(&self)
    }

    /// Its name (also its folder name).
    pub fn name(self) -> &'static str {
        match self {
            Condition::Day => "day",
            Condition::Dusk => "dusk",
            Condition::Night => "night",
            Condition::Fog => "fog",
            Condition::Rain => "rain",
            Condition::Snow => "snow",
            Condition::Sepia => "sepia",
            Condition::Overexposed => "overexposed",
            Condition::Painterly => "painterly",
            Condition::Monochrome => "monochrome",
            Condition::Vintage => "vintage",
            Condition::Noir => "noir",
            Condition::Misty => "misty",
            Condition::Neon => "neon",
            Condition::Pastel => "pastel",
            Condition::PopArt => "pop-art",
        }
    }

    /// The word captions use for it.
    pub fn word(self) -> &'static str {
        match self {
            Condition::Day => "sunny",
            Condition::Fog => "foggy",
            Condition::Rain => "rainy",
            Condition::Snow => "snowy",
            Condition::PopArt => "pop art",
            other => other.name(),
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self> {
        Condition::ALL.into_iter().find(|c| c.name() == s.trim()).ok_or_else(|| Error::InvalidSetting {
            name: "conditions".into(),
            problem: format!("{s:?} is not one of {}", Condition::ALL.map(|c| c.name()).join(", ")),
        })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        s.split(',').filter(|p| !p.trim().is_empty()).map(Condition::parse).collect()
    }
}

/// Image size and seed of a synthetic set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSize {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// A labelled scene: its image under `condition` and its train ids.
pub fn scene_image(layout_rng: &mut Rng, render_rng: &mut Rng, size: SynthSize, condition: Condition) -> (Image8, Image8) {
    let scene = layout::generate(size.width, size.height, layout_rng);
    (look::render(&scene, condition, render_rng), scene.labels())
}

/// Writes a generated PNG. Not fsynced one by one: a set is complete only once its
/// last file (the captions file, or the caller's stamp) is written atomically, so a
/// crash leaves an incomplete set that is regenerated, never a torn one that is used.
fn write_png(img: &Image8, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    std::fs::write(path, img.to_png()?).with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `job(i)` for i in 0..n on `workers` threads; the first error wins.
fn parallel(n: usize, workers: usize, job: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Err(e) = job(i) {
                    first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    next.store(n, Ordering::Relaxed);
                }
            });
        }
    });
    first_error.into_inner().unwrap_or_else(|p| p.into_inner()).map_or(Ok(()), Err)
}

/// Writes segmentation sets: for each condition a `folder` dataset
/// `root/<condition>/{images,labels}/<split>/NNNN.png`. Split `s` (its position in
/// `splits`) holds the same layouts under every condition. `root/synth.json` (the
/// settings) is written last, atomically: its presence marks the sets complete.
pub fn write_segmentation(
    root: &Path,
    conditions: &[Condition],
    splits: &[(String, usize)],
    size: SynthSize,
    seed: u64,
    workers: usize,
) -> Result<()> {
    for (si, (split, n)) in splits.iter().enumerate() {
        parallel(*n, workers, &|i| {
            for &c in conditions {
                let mut layout = Rng::derive(seed, &[stream::SYNTH_LAYOUT, si as u64, i as u64]);
                let mut render = Rng::derive(seed, &[stream::SYNTH_RENDER, 0, si as u64, i as u64, c as u64]);
                let (img, lbl) = scene_image(&mut layout, &mut render, size, c);
                let dir = root.join(c.name());
                write_png(&img, &dir.join("images").join(split).join(format!("{i:04}.png")))?;
                write_png(&lbl, &dir.join("labels").join(split).join(format!("{i:04}.png")))?;
            }
            Ok(())
        })?;
    }
    let names: Vec<&str> = conditions.iter().map(|c| c.name()).collect();
    let about = serde_json::json!({"conditions": names, "splits": splits, "size": size, "seed": seed});
    famix::io::atomic_write_json(&root.join("synth.json"), &about)
}

/// One line of a captions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionLine {
    /// Image path, relative to the folder of the captions file.
    pub image: String,
    /// The caption.
    pub text: String,
    /// The condition it was rendered under (synthetic sets only; readers ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// Writes a captioned set: `root/images/NNNNN.png` and `root/captions.jsonl`, image
/// `i` rendered under `conditions[i mod len]` from its own layout (disjoint from the
/// segmentation sets'). Returns the captions file.
pub fn write_captioned(root: &Path, conditions: &[Condition], n: usize, size: SynthSize, seed: u64, workers: usize) -> Result<PathBuf> {
    if conditions.is_empty() {
        return Err(Error::InvalidSetting { name: "conditions".into(), problem: "no condition given".into() });
    }
    let lines = std::sync::Mutex::new(vec![None; n]);
    parallel(n, workers, &|i| {
        let c = conditions[i % conditions.len()];
        let mut layout_rng = Rng::derive(seed, &[stream::SYNTH_CAPTIONED, i as u64]);
        let mut render_rng = Rng::derive(seed, &[stream::SYNTH_RENDER, 1, 0, i as u64, c as u64]);
        let scene = layout::generate(size.width, size.height, &mut layout_rng);
        let img = look::render(&scene, c, &mut render_rng);
        let text = caption::caption(&scene, c, &mut Rng::derive(seed, &[stream::SYNTH_CAPTION, i as u64]));
        let rel = format!("images/{i:05}.png");
        write_png(&img, &root.join(&rel))?;
        lines.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(CaptionLine { image: rel, text, condition: Some(c.name().into()) });
        Ok(())
    })?;
    let mut text = String::new();
    for l in lines.into_inner().unwrap_or_else(|p| p.into_inner()).into_iter().flatten() {
        text.push_str(&serde_json::to_string(&l)?);
        text.push('\n');
    }
    let path = root.join("captions.jsonl");
    famix::io::atomic_write(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
