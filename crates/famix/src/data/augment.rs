//! Augmentation and evaluation transforms with the reference's semantics, on 8-bit
//! images as Pillow computes them (the reference's torchvision transforms run on PIL
//! images): random crop, colour jitter (brightness/contrast/saturation in random
//! order, `ImageEnhance` arithmetic), horizontal flip, Synthia's random scale + crop +
//! resize, Mapillary's resize-height + centre crop/pad, GTA5's validation centre crop.
//! Labels are only ever resampled with nearest neighbour.
//!
//! Random draws come from a per-sample [`Rng`] in a fixed order (scale, crop offsets,
//! jitter factors, jitter order, flip), so tools/famix_ref.py can replay them.

use crate::data::datasets::EvalTransform;
use crate::data::labels::IGNORE;
use crate::imageops::{center_crop_offsets, py_round, Filter, Image8};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
/// The training augmentation (docs/src/design.md §4).
pub struct TrainAugment {
    /// Random crop size (square).
    pub crop: usize,
    /// Colour jitter (brightness, contrast, saturation 0.8, random order).
    pub jitter: bool,
    /// Horizontal flip with probability 0.5.
    pub flip: bool,
    /// Synthia: scale U(0.5, 2), crop crop·15/16 (720 for 768), resize to crop.
    pub random_scale: bool,
}

impl TrainAugment {
    /// The reference's training augmentation (`--data_aug`).
    pub fn reference(crop: usize, synthia: bool) -> Self {
        TrainAugment { crop, jitter: true, flip: true, random_scale: synthia }
    }
    /// Style mining: random crops only.
    pub fn crop_only(crop: usize) -> Self {
        TrainAugment { crop, jitter: false, flip: false, random_scale: false }
    }
}

/// Colour-jitter strength of the reference (0.8 for brightness, contrast, saturation).
pub const JITTER: f64 = 0.8;

/// Draws a crop offset as `ExtRandomCrop.get_params`; smaller images are padded.
fn crop_offset(rng: &mut Rng, size: usize, target: usize) -> i64 {
    if size > target {
        rng.below((size - target + 1) as u64) as i64
    } else {
        0
    }
}

/// Augments an (image, label) pair with draws from `rng`.
pub(crate) fn augment_train(img: &Image8, lbl: &Image8, a: &TrainAugment, rng: &mut Rng) -> (Image8, Image8) {
    let (mut img, mut lbl) = if a.random_scale {
        let s = rng.uniform_range(0.5, 2.0);
        let (w, h) = ((img.width as f64 * s) as usize, (img.height as f64 * s) as usize);
        let img = img.resize(w.max(1), h.max(1), Filter::Bicubic);
        let lbl = lbl.resize(w.max(1), h.max(1), Filter::Nearest);
        let pre = a.crop * 15 / 16;
        // RandomCrop(nopad=False): pad (t - s)//2 + 1 on both sides when smaller.
        let pad_h = if pre > img.height { (pre - img.height) / 2 + 1 } else { 0 };
        let pad_w = if pre > img.width { (pre - img.width) / 2 + 1 } else { 0 };
        let (ph, pw) = (img.height + 2 * pad_h, img.width + 2 * pad_w);
        let top = crop_offset(rng, ph, pre) - pad_h as i64;
        let left = crop_offset(rng, pw, pre) - pad_w as i64;
        let img = img.crop(left, top, pre, pre, 0).resize(a.crop, a.crop, Filter::Bilinear);
        let lbl = lbl.crop(left, top, pre, pre, IGNORE).resize(a.crop, a.crop, Filter::Nearest);
        (img, lbl)
    } else {
        let top = crop_offset(rng, img.height, a.crop);
        let left = crop_offset(rng, img.width, a.crop);
        (img.crop(left, top, a.crop, a.crop, 0), lbl.crop(left, top, a.crop, a.crop, IGNORE))
    };
    if a.jitter {
        let lo = (1.0 - JITTER).max(0.0);
        let factors = [rng.uniform_range(lo, 1.0 + JITTER), rng.uniform_range(lo, 1.0 + JITTER), rng.uniform_range(lo, 1.0 + JITTER)];
        let mut order = [0usize, 1, 2];
        rng.shuffle(&mut order);
        img = color_jitter(&img, factors, order);
    }
    if a.flip && rng.uniform() < 0.5 {
        img = img.hflip();
        lbl = lbl.hflip();
    }
    (img, lbl)
}

/// Applies brightness (0), contrast (1), saturation (2) with `factors` in `order`.
pub fn color_jitter(img: &Image8, factors: [f64; 3], order: [usize; 3]) -> Image8 {
    let mut out = img.clone();
    for &k in &order {
        out = match k {
            0 => adjust_brightness(&out, factors[0]),
            1 => adjust_contrast(&out, factors[1]),
            _ => adjust_saturation(&out, factors[2]),
        };
    }
    out
}

/// Pillow's `Image.blend(a, b, alpha)` on 8-bit data (f32 arithmetic, truncation,
/// clipping only when extrapolating).
fn blend_px(a: u8, b: u8, alpha: f32) -> u8 {
    let t = a as i32 as f32 + alpha * ((b as i32 - a as i32) as f32);
    if (0.0..=1.0).contains(&alpha) {
        t as u8
    } else if t <= 0.0 {
        0
    } else if t >= 255.0 {
        255
    } else {
        t as u8
    }
}

/// Pillow's RGB → L: (R·19595 + G·38470 + B·7471 + 0x8000) >> 16.
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// torchvision's `adjust_brightness` (blend with black), Pillow-exact.
pub(crate) fn adjust_brightness(img: &Image8, f: f64) -> Image8 {
    let a = f as f32;
    Image8 { data: img.data.iter().map(|&v| blend_px(0, v, a)).collect(), ..img.clone() }
}

/// torchvision's `adjust_contrast` (blend with the mean grey), Pillow-exact.
pub(crate) fn adjust_contrast(img: &Image8, f: f64) -> Image8 {
    let a = f as f32;
    let sum: u64 = img.data.chunks_exact(3).map(|p| luma(p[0], p[1], p[2]) as u64).sum();
    let n = (img.width * img.height).max(1) as f64;
    let mean = (sum as f64 / n + 0.5) as u8;
    Image8 { data: img.data.iter().map(|&v| blend_px(mean, v, a)).collect(), ..img.clone() }
}

/// torchvision's `adjust_saturation` (blend with the grey image), Pillow-exact.
pub(crate) fn adjust_saturation(img: &Image8, f: f64) -> Image8 {
    let a = f as f32;
    let mut out = img.clone();
    for (o, p) in out.data.chunks_exact_mut(3).zip(img.data.chunks_exact(3)) {
        let l = luma(p[0], p[1], p[2]);
        for c in 0..3 {
            o[c] = blend_px(l, p[c], a);
        }
    }
    out
}

/// The reference's evaluation-time transform for a dataset.
pub fn eval_transform(img: Image8, lbl: Image8, t: EvalTransform) -> (Image8, Image8) {
    match t {
        EvalTransform::None => (img, lbl),
        EvalTransform::CenterCrop { height, width } => {
            // torchvision centre crop; a smaller image is padded (labels with ignore).
            let pad_l = if width > img.width { (width - img.width) / 2 } else { 0 } as i64;
            let pad_t = if height > img.height { (height - img.height) / 2 } else { 0 } as i64;
            let (ph, pw) = (img.height.max(height), img.width.max(width));
            let (top, left) = center_crop_offsets(ph, pw, height, width);
            let (top, left) = (top - pad_t, left - pad_l);
            (img.crop(left, top, width, height, 0), lbl.crop(left, top, width, height, IGNORE))
        }
        EvalTransform::ResizeHeightCropPad { size } => {
            let tw = (img.width as f64 / img.height as f64 * size as f64) as usize;
            let img = img.resize(tw, size, Filter::Bicubic);
            let lbl = lbl.resize(tw, size, Filter::Nearest);
            // The reference pads (t - s) on *both* sides but computes the crop box
            // from the unpadded size, and pads labels with 0; reproduced as is.
            let pad_x = size.saturating_sub(img.width) as i64;
            let pad_y = size.saturating_sub(img.height) as i64;
            let x1 = py_round((img.width as f64 - size as f64) / 2.0) - pad_x;
            let y1 = py_round((img.height as f64 - size as f64) / 2.0) - pad_y;
            (img.crop(x1, y1, size, size, 0), lbl.crop(x1, y1, size, size, 0))
        }
    }
}

/// The grid cells along one axis of `size` pixels, as (start, length): cells follow the
/// stride-4 feature map (`unit` = 4 for images/labels, 1 for features); all cells are
/// equal when the feature size divides by the grid, else the last takes the remainder.
pub(crate) fn cell_bounds(size: usize, grid: usize, unit: usize) -> Vec<(usize, usize)> {
    let q = (size / unit) / grid * unit;
    (0..grid).map(|i| if i + 1 < grid { (i * q, q) } else { (i * q, size - i * q) }).collect()
}

/// Dominant class of each grid cell (row-major): the mode, ties → smallest id, 255
/// counts as a class. Cells are those of the stride-4 features (see `cell_bounds`).
pub fn dominant_classes(lbl: &Image8, grid: usize) -> Vec<u8> {
    let rows = cell_bounds(lbl.height, grid, 4);
    let cols = cell_bounds(lbl.width, grid, 4);
    let mut out = Vec::with_capacity(grid * grid);
    for &(y0, ph) in &rows {
        for &(x0, pw) in &cols {
            let mut counts = [0u32; 256];
            for y in y0..y0 + ph {
                for &v in &lbl.data[y * lbl.width + x0..y * lbl.width + x0 + pw] {
                    counts[v as usize] += 1;
                }
            }
            let mut best = 0usize;
            for (c, &n) in counts.iter().enumerate() {
                if n > counts[best] {
                    best = c;
                }
            }
            out.push(best as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_follow_the_feature_grid() {
        assert_eq!(cell_bounds(768, 3, 4), vec![(0, 256), (256, 256), (512, 256)]);
        assert_eq!(cell_bounds(512, 3, 4), vec![(0, 168), (168, 168), (336, 176)]);
        assert_eq!(cell_bounds(128, 3, 1), vec![(0, 42), (42, 42), (84, 44)]);
    }

    #[test]
    fn dominant_class_ties_go_to_smallest_and_ignore_counts() {
        let mut l = Image8::new(8, 8, 1, 255);
        // cell (0,0) is 4x4: eight 3s and eight 1s → 1; the others all 255.
        for y in 0..4 {
            for x in 0..4 {
                l.data[y * 8 + x] = if y < 2 { 3 } else { 1 };
            }
        }
        let d = dominant_classes(&l, 2);
        assert_eq!(d, vec![1, 255, 255, 255]);
    }

    #[test]
    fn crop_and_flip_keep_image_and_label_aligned() {
        // A label equal to the image's red channel stays equal through augmentation.
        let mut img = Image8::new(50, 40, 3, 0);
        let mut lbl = Image8::new(50, 40, 1, 0);
        for y in 0..40 {
            for x in 0..50 {
                let v = ((x * 5 + y * 3) % 250) as u8;
                img.data[(y * 50 + x) * 3] = v;
                lbl.data[y * 50 + x] = v;
            }
        }
        let a = TrainAugment { crop: 32, jitter: false, flip: true, random_scale: false };
        for s in 0..20 {
            let (i, l) = augment_train(&img, &lbl, &a, &mut Rng::new(s));
            assert_eq!((i.width, i.height, l.width, l.height), (32, 32, 32, 32));
            for k in 0..32 * 32 {
                assert_eq!(i.data[k * 3], l.data[k]);
            }
        }
    }
}
