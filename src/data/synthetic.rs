//! A procedural two-domain street-scene dataset for `famix demo` and tests: the same
//! scene layouts (sky, buildings, vegetation, road, sidewalk, poles, signs, cars,
//! people) rendered in a bright "day" style (source) and a dark, tinted, noisy
//! "night" style (target). Labels are Cityscapes train ids.

use std::path::Path;

use crate::error::Result;

use crate::imageops::Image8;
use crate::rng::Rng;

/// Colours per train id and rendering parameters of one domain.
#[derive(Debug, Clone)]
pub struct DomainStyle {
    /// Base colour of each class.
    pub colors: [[u8; 3]; 19],
    /// Pixel noise amplitude.
    pub noise: f64,
    /// Brightness gain.
    pub gain: f64,
    /// Per-channel colour tint.
    pub tint: [f64; 3],
}

fn base_colors() -> [[u8; 3]; 19] {
    let mut c = [[128u8, 128, 128]; 19];
    c[0] = [110, 110, 115]; // road
    c[1] = [190, 180, 170]; // sidewalk
    c[2] = [150, 120, 100]; // building
    c[5] = [90, 90, 90]; // pole
    c[7] = [230, 200, 30]; // traffic sign
    c[8] = [60, 150, 50]; // vegetation
    c[9] = [150, 190, 90]; // terrain
    c[10] = [120, 180, 240]; // sky
    c[11] = [200, 60, 70]; // person
    c[13] = [40, 60, 200]; // car
    c
}

impl DomainStyle {
    /// The source domain: bright daylight scenes.
    pub fn day() -> Self {
        DomainStyle { colors: base_colors(), noise: 12.0, gain: 1.0, tint: [1.0, 1.0, 1.0] }
    }
    /// Night: the same scene colours, darker (gain 0.45), blue-tinted and noisier: a
    /// pure appearance shift, the kind FAMix's layer-1 statistics mixing is meant for.
    pub fn night() -> Self {
        let colors = base_colors();
        DomainStyle { colors, noise: 25.0, gain: 0.45, tint: [0.8, 0.9, 1.3] }
    }
}

fn fill_rect(lbl: &mut Image8, x0: i64, y0: i64, x1: i64, y1: i64, class: u8) {
    for y in y0.max(0)..y1.min(lbl.height as i64) {
        for x in x0.max(0)..x1.min(lbl.width as i64) {
            lbl.data[y as usize * lbl.width + x as usize] = class;
        }
    }
}

/// A random scene layout (train ids), `w`×`h`.
pub fn layout(w: usize, h: usize, rng: &mut Rng) -> Image8 {
    let (wi, hi) = (w as i64, h as i64);
    let mut l = Image8::new(w, h, 1, 10); // sky
    let horizon = (hi as f64 * rng.uniform_range(0.35, 0.5)) as i64;
    // Buildings along the horizon.
    let mut x = 0;
    while x < wi {
        let bw = (wi as f64 * rng.uniform_range(0.1, 0.3)) as i64 + 1;
        let top = horizon - (hi as f64 * rng.uniform_range(0.05, 0.3)) as i64;
        let class = if rng.uniform() < 0.25 { 8 } else { 2 };
        fill_rect(&mut l, x, top, x + bw, horizon, class);
        x += bw;
    }
    // Ground: sidewalks, terrain strips, road.
    fill_rect(&mut l, 0, horizon, wi, hi, 1);
    let road_top = horizon + (hi - horizon) / 6;
    for y in road_top..hi {
        let t = (y - road_top) as f64 / (hi - road_top).max(1) as f64;
        let half = (wi as f64 * (0.15 + 0.4 * t)) as i64;
        fill_rect(&mut l, wi / 2 - half, y, wi / 2 + half, y + 1, 0);
    }
    if rng.uniform() < 0.5 {
        fill_rect(&mut l, 0, hi - hi / 8, wi / 6, hi, 9);
    }
    // Poles with signs, people on the sidewalk, cars on the road.
    for _ in 0..rng.below(3) + 1 {
        let px = rng.below(w as u64) as i64;
        let top = horizon - (hi as f64 * rng.uniform_range(0.05, 0.2)) as i64;
        fill_rect(&mut l, px, top, px + (wi / 64).max(1), hi - hi / 5, 5);
        fill_rect(&mut l, px - wi / 40, top, px + wi / 40, top + hi / 20, 7);
    }
    for _ in 0..rng.below(3) {
        let px = if rng.uniform() < 0.5 { rng.below((w / 5) as u64) as i64 } else { wi - 1 - rng.below((w / 5) as u64) as i64 };
        let py = horizon + (hi - horizon) / 3 + rng.below(((hi - horizon) / 3).max(1) as u64) as i64;
        fill_rect(&mut l, px, py - hi / 8, px + (wi / 40).max(2), py, 11);
    }
    for _ in 0..rng.below(3) + 1 {
        let cy = road_top + rng.below(((hi - road_top) * 2 / 3).max(1) as u64) as i64 + hi / 16;
        let cw = wi / 8 + (cy - road_top) * wi / (4 * hi);
        let cx = wi / 2 - cw + rng.below((2 * cw).max(1) as u64) as i64;
        fill_rect(&mut l, cx - cw / 2, cy - cw / 3, cx + cw / 2, cy, 13);
    }
    l
}

/// Renders a layout in a domain style (smooth shading + noise).
#[allow(clippy::needless_range_loop)] // one noise draw per (pixel, channel), in this order
pub fn render(lbl: &Image8, style: &DomainStyle, rng: &mut Rng) -> Image8 {
    let mut img = Image8::new(lbl.width, lbl.height, 3, 0);
    for y in 0..lbl.height {
        let shade = 0.85 + 0.3 * y as f64 / lbl.height as f64;
        for x in 0..lbl.width {
            let c = style.colors[(lbl.data[y * lbl.width + x] as usize).min(18)];
            for ch in 0..3 {
                let n = (rng.uniform() - 0.5) * 2.0 * style.noise;
                let v = c[ch] as f64 * shade * style.gain * style.tint[ch] + n;
                img.data[(y * lbl.width + x) * 3 + ch] = v.clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

/// Writes a `folder` dataset (images/{split}, labels/{split}) of `n` scenes per split.
pub fn write_dataset(root: &Path, style: &DomainStyle, splits: &[(&str, usize)], w: usize, h: usize, seed: u64) -> Result<()> {
    for (si, (split, n)) in splits.iter().enumerate() {
        for i in 0..*n {
            let mut rng = Rng::derive(seed, &[crate::rng::stream::DEMO, si as u64, i as u64]);
            let lbl = layout(w, h, &mut rng);
            let img = render(&lbl, style, &mut rng);
            img.save_png(&root.join("images").join(split).join(format!("{i:04}.png")))?;
            lbl.save_png(&root.join("labels").join(split).join(format!("{i:04}.png")))?;
        }
    }
    Ok(())
}
