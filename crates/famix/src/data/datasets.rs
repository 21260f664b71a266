//! Dataset readers in their official folder layouts (docs/src/design.md §6): GTA5, Synthia
//! (RAND-CITYSCAPES), Cityscapes, BDD100K, Mapillary Vistas v1.2, ACDC, and a generic
//! `folder` dataset. Each lists (image, label) pairs and knows its label conversion
//! to the 19 Cityscapes train ids.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::error::{fail, Context, Error, Result};
use serde::Serialize;

use super::classes::{ClassSet, LabelCodec};
use super::labels::{cityscapes_map, identity_map, mapillary_map, synthia_map, LabelMap, CITYSCAPES_CLASSES};
use crate::imageops::Image8;

const GTA5_TRAIN: &str = include_str!("../../assets/splits/gta5_train.txt");
const GTA5_VAL: &str = include_str!("../../assets/splits/gta5_val.txt");
const SYNTHIA_VAL: &str = include_str!("../../assets/splits/synthia_val.txt");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
/// The dataset layouts famix reads (docs/src/design.md §6).
pub enum DatasetKind {
    /// GTA5 (synthetic, Cityscapes label ids).
    Gta5,
    /// Synthia RAND-CITYSCAPES.
    Synthia,
    /// Cityscapes.
    Cityscapes,
    /// BDD100K semantic segmentation.
    Bdd100k,
    /// Mapillary Vistas v1.2.
    Mapillary,
    /// ACDC (one condition at a time).
    Acdc,
    /// images/ + labels/ (PNG train ids), optionally split sub-folders.
    Folder,
}

impl DatasetKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Gta5 => "gta5",
            DatasetKind::Synthia => "synthia",
            DatasetKind::Cityscapes => "cityscapes",
            DatasetKind::Bdd100k => "bdd100k",
            DatasetKind::Mapillary => "mapillary",
            DatasetKind::Acdc => "acdc",
            DatasetKind::Folder => "folder",
        }
    }

    /// The raw-id → train-id table of this dataset.
    pub fn label_map(self) -> LabelMap {
        match self {
            DatasetKind::Gta5 | DatasetKind::Cityscapes | DatasetKind::Acdc => cityscapes_map(),
            DatasetKind::Synthia => synthia_map(),
            DatasetKind::Mapillary => mapillary_map(),
            DatasetKind::Bdd100k | DatasetKind::Folder => identity_map(),
        }
    }

    /// The evaluation-time transform the reference applies to this dataset's val split.
    pub fn eval_transform(self) -> EvalTransform {
        match self {
            DatasetKind::Gta5 => EvalTransform::CenterCrop { height: 1046, width: 1914 },
            DatasetKind::Mapillary => EvalTransform::ResizeHeightCropPad { size: 1536 },
            _ => EvalTransform::None,
        }
    }
}
crate::names::named!(
    DatasetKind,
    [
        DatasetKind::Gta5,
        DatasetKind::Synthia,
        DatasetKind::Cityscapes,
        DatasetKind::Bdd100k,
        DatasetKind::Mapillary,
        DatasetKind::Acdc,
        DatasetKind::Folder
    ]
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// How a dataset's validation images are transformed before evaluation.
pub enum EvalTransform {
    /// As they are.
    None,
    /// Centre crop (GTA5: 1046 × 1914).
    CenterCrop {
        /// Crop height.
        height: usize,
        /// Crop width.
        width: usize,
    },
    /// Mapillary: resize to height `size` (bicubic image, nearest label), centre crop/pad to size².
    ResizeHeightCropPad {
        /// Target height and square side (1536).
        size: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// One image and its label file.
pub struct Sample {
    /// The image.
    pub image: PathBuf,
    /// Its label (raw ids).
    pub label: PathBuf,
}

/// A problem found while listing a dataset (reported by `data check`).
#[derive(Debug, Clone, Serialize)]
pub struct ListingIssue {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

#[derive(Clone)]
/// A listed dataset split.
pub struct Dataset {
    /// The layout.
    pub kind: DatasetKind,
    /// The root folder.
    pub root: PathBuf,
    /// The split (train, val, ...).
    pub split: String,
    /// The ACDC condition, if any.
    pub condition: Option<String>,
    /// Pairs, sorted by path.
    pub samples: Vec<Sample>,
    /// Label values → training ids: the layout's own table, or a class set's
    /// ([`Dataset::with_classes`]).
    pub codec: LabelCodec,
    /// Images without a label file and labels without an image.
    pub issues: Vec<ListingIssue>,
}

/// ACDC's conditions.
pub const ACDC_CONDITIONS: [&str; 4] = ["night", "snow", "rain", "fog"];

fn need_dir(p: &Path, what: &str) -> Result<()> {
    if !p.is_dir() {
        let problem = if p.exists() {
            format!("{what} {} is a file, not a folder", p.display())
        } else {
            format!("{what} folder {} not found", p.display())
        };
        return Err(Error::DatasetLayout { path: p.to_path_buf(), problem });
    }
    Ok(())
}

fn files_with_suffix(dir: &Path, suffixes: &[&str], recursive: bool) -> Result<Vec<PathBuf>> {
    super::walk_files(dir, recursive, &|n| suffixes.iter().any(|s| n.ends_with(s)))
}

/// PNG width/height from the header without decoding.
pub(crate) fn png_size(path: &Path) -> Result<(u32, u32)> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let r = png::Decoder::new(BufReader::new(f)).read_info().with_context(|| format!("corrupt PNG {}", path.display()))?;
    let i = r.info();
    Ok((i.width, i.height))
}

/// Pairs found while listing a split, and what did not pair up.
#[derive(Default)]
struct Listing {
    samples: Vec<Sample>,
    issues: Vec<ListingIssue>,
}

impl Listing {
    /// Adds (image, label) when the label exists, else an issue.
    fn pair(&mut self, image: PathBuf, label: PathBuf) {
        if label.is_file() {
            self.samples.push(Sample { image, label });
        } else {
            self.issues
                .push(ListingIssue { path: image.display().to_string(), problem: format!("no label file (expected {})", label.display()) });
        }
    }

    fn issue(&mut self, path: &Path, problem: String) {
        self.issues.push(ListingIssue { path: path.display().to_string(), problem });
    }

    /// Labels under `dir` that no listed image uses.
    fn orphan_labels(&mut self, dir: &Path, suffix: &str) -> Result<()> {
        let used: std::collections::HashSet<&PathBuf> = self.samples.iter().map(|s| &s.label).collect();
        let orphans: Vec<PathBuf> = files_with_suffix(dir, &[suffix], true)?.into_iter().filter(|l| !used.contains(l)).collect();
        for l in orphans {
            self.issue(&l, "label without an image".into());
        }
        Ok(())
    }
}

/// GTA5: `images/`, `labels/`, split by the reference's lists (or `all`).
fn list_gta5(root: &Path, split: &str, out: &mut Listing) -> Result<()> {
    let (img_dir, lbl_dir) = (root.join("images"), root.join("labels"));
    need_dir(&img_dir, "GTA5 images")?;
    need_dir(&lbl_dir, "GTA5 labels")?;
    let names: Vec<String> = match split {
        "train" => GTA5_TRAIN.lines().map(str::to_string).collect(),
        "val" => GTA5_VAL.lines().map(str::to_string).collect(),
        "all" => files_with_suffix(&img_dir, &[".png"], false)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        other => fail!(InvalidSetting, "split", "GTA5 split must be train, val or all (got {other:?})"),
    };
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let img = img_dir.join(n);
        if img.is_file() {
            out.pair(img, lbl_dir.join(n));
        } else {
            out.issue(&img, "listed in the split but missing".into());
        }
    }
    Ok(())
}

/// Cityscapes (`leftImg8bit/`, `gtFine/`) and ACDC (`rgb_anon/`, `gt/` per condition).
fn list_cityscapes_like(kind: DatasetKind, root: &Path, split: &str, condition: Option<&str>, out: &mut Listing) -> Result<()> {
    let (img_dir, lbl_dir, img_suffix, lbl_suffix) = if kind == DatasetKind::Acdc {
        let cond = condition.ok_or_else(|| Error::invalid_setting("condition", "ACDC needs `condition` (night, snow, rain or fog)"))?;
        if !ACDC_CONDITIONS.contains(&cond) {
            fail!(InvalidSetting, "condition", "ACDC condition must be one of night, snow, rain, fog (got {cond:?})");
        }
        (root.join("rgb_anon").join(cond).join(split), root.join("gt").join(cond).join(split), "_rgb_anon.png", "_gt_labelIds.png")
    } else {
        (root.join("leftImg8bit").join(split), root.join("gtFine").join(split), "_leftImg8bit.png", "_gtFine_labelIds.png")
    };
    need_dir(&img_dir, "image")?;
    need_dir(&lbl_dir, "label")?;
    for img in files_with_suffix(&img_dir, &[img_suffix], true)? {
        let rel = img.strip_prefix(&img_dir).unwrap_or(&img);
        let name = img.file_name().unwrap_or_default().to_string_lossy();
        let prefix = name.trim_end_matches(img_suffix);
        let lbl = lbl_dir.join(rel.parent().unwrap_or(Path::new(""))).join(format!("{prefix}{lbl_suffix}"));
        // The reference keeps only the 1920x1080 ACDC fog images.
        if kind == DatasetKind::Acdc && condition == Some("fog") {
            match png_size(&img) {
                Ok((1920, 1080)) => {}
                Ok(_) => continue,
                Err(e) => {
                    out.issue(&img, format!("{e:#}"));
                    continue;
                }
            }
        }
        out.pair(img, lbl);
    }
    out.orphan_labels(&lbl_dir, lbl_suffix)
}

/// BDD100K: `images/{split}/*.jpg`, `labels/{split}/<stem>.png` or `<stem>_train_id.png`.
fn list_bdd100k(root: &Path, split: &str, out: &mut Listing) -> Result<()> {
    let (img_dir, lbl_dir) = (root.join("images").join(split), root.join("labels").join(split));
    need_dir(&img_dir, "BDD100K images")?;
    need_dir(&lbl_dir, "BDD100K labels")?;
    for img in files_with_suffix(&img_dir, &[".jpg", ".png"], false)? {
        let stem = img.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let plain = lbl_dir.join(format!("{stem}.png"));
        // Official sem_seg downloads name labels <stem>_train_id.png.
        let official = lbl_dir.join(format!("{stem}_train_id.png"));
        let lbl = if plain.is_file() || !official.is_file() { plain } else { official };
        out.pair(img, lbl);
    }
    out.orphan_labels(&lbl_dir, ".png")
}

/// Mapillary Vistas: `{training|validation}/images/*.jpg`, `.../labels/*.png`.
fn list_mapillary(root: &Path, split: &str, out: &mut Listing) -> Result<()> {
    let sub = match split {
        "train" | "training" => "training",
        "val" | "validation" => "validation",
        other => fail!(InvalidSetting, "split", "Mapillary split must be train or val (got {other:?})"),
    };
    let (img_dir, lbl_dir) = (root.join(sub).join("images"), root.join(sub).join("labels"));
    need_dir(&img_dir, "Mapillary images")?;
    need_dir(&lbl_dir, "Mapillary labels")?;
    for img in files_with_suffix(&img_dir, &[".jpg", ".png"], false)? {
        let stem = img.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        out.pair(img, lbl_dir.join(format!("{stem}.png")));
    }
    out.orphan_labels(&lbl_dir, ".png")
}

/// Synthia: `RGB/`, `GT/LABELS/`, with split sub-folders (the reference's layout) or
/// flat (the official download) split by the reference's validation list.
fn list_synthia(root: &Path, split: &str, out: &mut Listing) -> Result<()> {
    let (rgb, gt) = (root.join("RGB"), root.join("GT").join("LABELS"));
    need_dir(&rgb, "Synthia RGB")?;
    need_dir(&gt, "Synthia GT/LABELS")?;
    if rgb.join(split).is_dir() {
        let (img_dir, lbl_dir) = (rgb.join(split), gt.join(split));
        need_dir(&lbl_dir, "Synthia label split")?;
        for img in files_with_suffix(&img_dir, &[".png"], false)? {
            let n = img.file_name().unwrap_or_default().to_owned();
            out.pair(img, lbl_dir.join(n));
        }
        return Ok(());
    }
    let val: std::collections::HashSet<&str> = SYNTHIA_VAL.lines().map(str::trim).collect();
    let want_val = match split {
        "val" => true,
        "train" => false,
        other => fail!(InvalidSetting, "split", "Synthia split must be train or val (got {other:?})"),
    };
    for img in files_with_suffix(&rgb, &[".png"], false)? {
        let n = img.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if val.contains(n.as_str()) == want_val {
            out.pair(img, gt.join(&n));
        }
    }
    Ok(())
}

/// A generic folder: `images/[split/]**/*.{png,jpg}`, `labels/[split/]**/*.png` (train ids).
fn list_folder(root: &Path, split: &str, out: &mut Listing) -> Result<()> {
    let (mut img_dir, mut lbl_dir) = (root.join("images"), root.join("labels"));
    need_dir(&img_dir, "images")?;
    if img_dir.join(split).is_dir() {
        img_dir = img_dir.join(split);
        lbl_dir = lbl_dir.join(split);
    } else {
        // With split sub-folders (train/val/test/...), a missing split is an error,
        // never "all images"; a folder without them (flat, or grouped by city or
        // sequence) is one split, whatever its name.
        const SPLIT_NAMES: [&str; 6] = ["train", "val", "test", "training", "validation", "testing"];
        let splits: Vec<String> = std::fs::read_dir(&img_dir)
            .with_context(|| format!("cannot list folder {}", img_dir.display()))?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| SPLIT_NAMES.contains(&n.as_str()))
            .collect();
        if !splits.is_empty() {
            return Err(Error::DatasetLayout {
                path: img_dir.join(split),
                problem: format!("split {split:?} not found in {} (it has: {})", img_dir.display(), splits.join(", ")),
            });
        }
    }
    need_dir(&lbl_dir, "labels")?;
    for img in files_with_suffix(&img_dir, &[".png", ".jpg", ".jpeg"], true)? {
        let rel = img.strip_prefix(&img_dir).unwrap_or(&img).with_extension("png");
        out.pair(img, lbl_dir.join(rel));
    }
    Ok(())
}

impl Dataset {
    /// Lists a dataset split. `condition` selects the ACDC subset (night/snow/rain/fog).
    pub fn open(kind: DatasetKind, root: &Path, split: &str, condition: Option<&str>) -> Result<Dataset> {
        need_dir(root, "dataset root")?;
        let mut l = Listing::default();
        match kind {
            DatasetKind::Gta5 => list_gta5(root, split, &mut l)?,
            DatasetKind::Cityscapes | DatasetKind::Acdc => list_cityscapes_like(kind, root, split, condition, &mut l)?,
            DatasetKind::Bdd100k => list_bdd100k(root, split, &mut l)?,
            DatasetKind::Mapillary => list_mapillary(root, split, &mut l)?,
            DatasetKind::Synthia => list_synthia(root, split, &mut l)?,
            DatasetKind::Folder => list_folder(root, split, &mut l)?,
        }
        Ok(Dataset {
            kind,
            root: root.to_path_buf(),
            split: split.to_string(),
            condition: condition.map(str::to_string),
            samples: l.samples,
            codec: LabelCodec::table(kind.label_map(), &|v| kind.known_raw_id(v)),
            issues: l.issues,
        })
    }

    /// Reads labels as `classes` declares them. Only a `folder` dataset's labels can
    /// hold other classes than Cityscapes' 19; the benchmark layouts keep their
    /// conversion and accept a class set of those 19 names (prompts may differ). A
    /// default set ([`ClassSet::is_default`]: no class file) keeps the layout's table.
    pub fn with_classes(mut self, classes: &ClassSet) -> Result<Self> {
        if classes.is_default() {
            return Ok(self);
        }
        if self.kind == DatasetKind::Folder {
            self.codec = classes.codec();
        } else if classes.names() != CITYSCAPES_CLASSES {
            fail!(
                InvalidSetting,
                "classes",
                "{} labels hold Cityscapes' 19 classes; a class set of {} other classes needs a \"folder\" dataset",
                self.kind.name(),
                classes.len()
            );
        }
        Ok(self)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No pairs at all?
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// An error naming the folder when the dataset has no image/label pair (every job
    /// over a dataset checks this first).
    pub(crate) fn require_samples(&self) -> Result<()> {
        if self.is_empty() {
            fail!(InvalidInput, &self.root, "no image/label pairs found for {} (run `famix data check`)", self.describe());
        }
        Ok(())
    }

    /// A note about pairs the listing could not make (images without labels, labels
    /// without images), or None when every file paired up.
    pub(crate) fn issues_note(&self) -> Option<String> {
        (!self.issues.is_empty()).then(|| {
            format!(
                "note: {}: {} files did not pair up (e.g. {}: {}); `famix data check` lists them",
                self.describe(),
                self.issues.len(),
                self.issues[0].path,
                self.issues[0].problem
            )
        })
    }

    /// A one-line description ("cityscapes val (500 images) at /data/cs").
    pub fn describe(&self) -> String {
        let cond = self.condition.as_ref().map(|c| format!(" {c}")).unwrap_or_default();
        format!("{}{cond} {} ({} images) at {}", self.kind.name(), self.split, self.len(), self.root.display())
    }

    /// Decodes sample `i`: RGB image and train-id label of the same size.
    pub fn load(&self, i: usize) -> Result<(Image8, Image8)> {
        let (img, raw) = self.load_raw(i)?;
        let data = self.codec.decode(&raw.data, &self.samples[i].label)?;
        Ok((img, Image8 { width: raw.width, height: raw.height, channels: 1, data }))
    }

    /// Decodes sample `i` with its label's raw values (before conversion: one id per
    /// pixel, or three bytes for colour-coded labels), checking that image and label
    /// have the same size.
    pub fn load_raw(&self, i: usize) -> Result<(Image8, Image8)> {
        let s = &self.samples[i];
        let img = Image8::open_rgb(&s.image)?;
        let lbl = if self.codec.is_rgb() {
            Image8::open_rgb(&s.label).with_context(|| format!("colour-coded label {}", s.label.display()))?
        } else {
            read_label_ids(&s.label, self.kind == DatasetKind::Synthia)?
        };
        if (img.width, img.height) != (lbl.width, lbl.height) {
            fail!(
                InvalidInput,
                &s.label,
                "image {} is {}x{} but its label {} is {}x{}",
                s.image.display(),
                img.width,
                img.height,
                s.label.display(),
                lbl.width,
                lbl.height
            );
        }
        Ok((img, lbl))
    }
}

/// A label PNG's raw ids (palette indices, grey values; Synthia: channel 0 of a
/// 16-bit RGB image), before conversion to train ids.
pub fn read_label_ids(path: &Path, synthia: bool) -> Result<Image8> {
    use png::{BitDepth, ColorType};
    let f = std::fs::File::open(path).with_context(|| format!("cannot open label {}", path.display()))?;
    let mut dec = png::Decoder::new(BufReader::new(f));
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec.read_info().with_context(|| format!("corrupt or non-PNG label {}", path.display()))?;
    let size = reader.output_buffer_size().ok_or_else(|| Error::invalid_input(path, format!("label {} is too large", path.display())))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).with_context(|| format!("corrupt or truncated label PNG {}", path.display()))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let line = info.line_size;
    let mut out = Vec::with_capacity(w * h);
    match (info.color_type, info.bit_depth) {
        (ColorType::Grayscale | ColorType::Indexed, BitDepth::Eight) => {
            for y in 0..h {
                out.extend_from_slice(&buf[y * line..y * line + w]);
            }
        }
        (ColorType::Grayscale | ColorType::Indexed, d @ (BitDepth::One | BitDepth::Two | BitDepth::Four)) => {
            let bits = d as usize;
            let mask = (1u16 << bits) as u8 - 1;
            for y in 0..h {
                let row = &buf[y * line..(y + 1) * line];
                for x in 0..w {
                    let bit = x * bits;
                    out.push((row[bit / 8] >> (8 - bits - bit % 8)) & mask);
                }
            }
        }
        (ColorType::Grayscale, BitDepth::Sixteen) => {
            for y in 0..h {
                for x in 0..w {
                    let v = u16::from_be_bytes([buf[y * line + 2 * x], buf[y * line + 2 * x + 1]]);
                    if v > 255 {
                        fail!(
                            InvalidInput,
                            path,
                            "label {} is a 16-bit image with value {v} at ({x},{y}); label ids must be < 256",
                            path.display()
                        );
                    }
                    out.push(v as u8);
                }
            }
        }
        (ColorType::Rgb | ColorType::Rgba, depth) if synthia => {
            let ch = if info.color_type == ColorType::Rgb { 3 } else { 4 };
            let bpc = if depth == BitDepth::Sixteen { 2 } else { 1 };
            for y in 0..h {
                for x in 0..w {
                    let o = y * line + x * ch * bpc;
                    // As the reference (numpy uint16 → uint8 cast): the low byte.
                    out.push(if bpc == 2 { buf[o + 1] } else { buf[o] });
                }
            }
        }
        (ColorType::GrayscaleAlpha, _) => {
            fail!(InvalidInput, path, "label {} is a grey+alpha image; expected a single-channel label-id PNG", path.display())
        }
        (c, d) => fail!(
            InvalidInput,
            path,
            "label {} is a {c:?} {d:?}-bit image; expected label ids (8-bit grey or palette PNG){}",
            path.display(),
            if matches!(c, ColorType::Rgb | ColorType::Rgba) { " — is this a colour visualisation?" } else { "" }
        ),
    }
    Ok(Image8 { width: w, height: h, channels: 1, data: out })
}

impl DatasetKind {
    /// Raw label ids this dataset defines (others are reported by `data check`).
    pub(crate) fn known_raw_id(self, v: u8) -> bool {
        match self {
            DatasetKind::Gta5 | DatasetKind::Cityscapes | DatasetKind::Acdc => v <= 33,
            DatasetKind::Mapillary => v <= 65,
            DatasetKind::Synthia => v <= 22,
            DatasetKind::Bdd100k | DatasetKind::Folder => v < 19 || v == 255,
        }
    }

    /// Splits `data check` looks at by default.
    pub fn default_splits(self) -> Vec<&'static str> {
        vec!["train", "val"]
    }
}
