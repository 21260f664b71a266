//! How a scene looks under each condition: the same geometry, different light and
//! weather, each effect modelled on its physical cause.
//!
//! * **Illumination.** Surface colour × the ambient light's colour and strength
//!   (sunlight by day, warm and low at dusk, a faint blue moonlight at night, flat
//!   grey under overcast skies); contact shadows under objects are strong in sunlight
//!   and soft under clouds.
//! * **Light sources** (dusk, night, dimly in bad weather): lit windows, street lamps,
//!   head- and tail-lights and traffic lights emit; lamps throw pools of light on the
//!   ground that fall off with the world distance to the lamp; every source gets a
//!   halo (a blurred copy of the emission).
//! * **Atmosphere.** Koschmieder's law: a surface at depth d keeps a fraction
//!   t = exp(−β·d) of its radiance and the rest is air-light, so fog erases contrast
//!   more the farther things are (thick in fog, faint aerial perspective otherwise).
//! * **Rain**: wet ground is darker and mirrors what stands on it (a reflection about
//!   the contact line, rippled), falling streaks. **Snow**: the ground, roofs, tops of
//!   cars and crowns whiten, flakes fall.
//! * **The sensor**: Gaussian noise that grows as the light falls (night is noisiest).
//!
//! The non-driving *styles* exist only in the demo CLIP's world: they are
//! photographic treatments of the day image (not physics: "misty" is a uniform
//! luminous haze, unlike fog's depth-dependent extinction; "noir" and "neon" are tone
//! mappings, unlike night's low light, lamps and sensor noise).

use rand_distr::{Distribution, Normal};

use super::scene::{class, Scene, EMISSIVE, GROUND, SHADOW, TOP};
use super::Condition;
use famix::imageops::Image8;
use famix::rng::Rng;

/// An RGB float image (0..1 nominal), row-major.
#[derive(Clone)]
struct Buf {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Buf {
    fn new(w: usize, h: usize) -> Self {
        Buf { w, h, px: vec![[0.0; 3]; w * h] }
    }

    /// Separable box blur of radius `r`, clamped at the borders.
    fn blur(&self, r: usize) -> Buf {
        let pass = |src: &Buf, horizontal: bool| {
            let mut out = Buf::new(src.w, src.h);
            let (len, lines) = if horizontal { (src.w, src.h) } else { (src.h, src.w) };
            for line in 0..lines {
                for i in 0..len {
                    let mut acc = [0.0f32; 3];
                    let (a, b) = (i.saturating_sub(r), (i + r).min(len - 1));
                    for k in a..=b {
                        let p = if horizontal { src.px[line * src.w + k] } else { src.px[k * src.w + line] };
                        (0..3).for_each(|c| acc[c] += p[c]);
                    }
                    let n = (b - a + 1) as f32;
                    let idx = if horizontal { line * src.w + i } else { i * src.w + line };
                    out.px[idx] = acc.map(|v| v / n);
                }
            }
            out
        };
        pass(&pass(self, true), false)
    }

    fn to_image(&self) -> Image8 {
        let data = self.px.iter().flat_map(|p| p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)).collect();
        Image8 { width: self.w, height: self.h, channels: 3, data }
    }
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn mul(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

fn add(a: [f32; 3], b: [f32; 3], k: f32) -> [f32; 3] {
    [a[0] + b[0] * k, a[1] + b[1] * k, a[2] + b[2] * k]
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Weather {
    Dry,
    Rain,
    Snow,
}

/// The physical parameters of a driving condition.
#[derive(Debug, Clone, Copy)]
struct Look {
    ambient: [f32; 3],
    /// Sky at the zenith, at the horizon, and the clouds' colour.
    sky: [[f32; 3]; 3],
    /// How dark contact shadows are (1: none).
    shadow: f32,
    /// Strength of the light sources (0: off).
    lights: f32,
    /// Extinction β per metre and the air-light.
    fog: (f32, [f32; 3]),
    weather: Weather,
    /// Sensor noise σ.
    noise: f32,
}

impl Look {
    fn of(c: Condition, rng: &mut Rng) -> Look {
        let grey = |v: f32| [v, v * 1.01, v * 1.03];
        match c {
            Condition::Dusk => Look {
                ambient: [0.78, 0.56, 0.45],
                sky: [[0.2, 0.17, 0.4], [0.98, 0.55, 0.28], [0.85, 0.45, 0.4]],
                shadow: 0.7,
                lights: 0.55,
                fog: (0.006, [0.72, 0.5, 0.4]),
                weather: Weather::Dry,
                noise: 0.02,
            },
            Condition::Night => Look {
                ambient: [0.08, 0.095, 0.15],
                sky: [[0.01, 0.01, 0.03], [0.07, 0.06, 0.09], [0.09, 0.08, 0.09]],
                shadow: 0.9,
                lights: 1.0,
                fog: (0.002, [0.05, 0.05, 0.07]),
                weather: Weather::Dry,
                noise: 0.035,
            },
            Condition::Fog => Look {
                ambient: [0.8, 0.82, 0.85],
                sky: [grey(0.78); 3],
                shadow: 0.85,
                lights: 0.2,
                fog: (rng.uniform_range(0.035, 0.07) as f32, grey(0.78)),
                weather: Weather::Dry,
                noise: 0.012,
            },
            Condition::Rain => Look {
                ambient: [0.52, 0.55, 0.6],
                sky: [grey(0.48), grey(0.6), grey(0.43)],
                shadow: 0.85,
                lights: 0.3,
                fog: (0.012, grey(0.58)),
                weather: Weather::Rain,
                noise: 0.02,
            },
            Condition::Snow => Look {
                ambient: [0.9, 0.92, 0.96],
                sky: [grey(0.74), grey(0.85), grey(0.8)],
                shadow: 0.85,
                lights: 0.15,
                fog: (0.01, grey(0.86)),
                weather: Weather::Snow,
                noise: 0.015,
            },
            // Day, and the base of the photographic styles.
            _ => Look {
                ambient: [1.0, 1.0, 0.97],
                sky: [[0.33, 0.52, 0.88], [0.7, 0.82, 0.95], [0.95, 0.95, 0.96]],
                shadow: 0.5,
                lights: 0.0,
                fog: (0.003, [0.78, 0.84, 0.92]),
                weather: Weather::Dry,
                noise: 0.01,
            },
        }
    }
}

/// Renders `scene` under `condition`; `rng` draws the condition's random parts
/// (fog density, rain streaks, flakes, sensor noise).
pub fn render(scene: &Scene, condition: Condition, rng: &mut Rng) -> Image8 {
    let look = Look::of(condition, rng);
    let mut img = surfaces(scene, &look);
    if look.lights > 0.0 {
        light_sources(scene, &look, &mut img);
    }
    if look.weather == Weather::Rain {
        reflections(scene, &mut img);
    }
    atmosphere(scene, &look, &mut img);
    match look.weather {
        Weather::Rain => streaks(&mut img, rng),
        Weather::Snow => flakes(&mut img, rng),
        Weather::Dry => {}
    }
    let img = if condition.is_style() { photographic_style(img, condition, rng) } else { img };
    sensor(img, look.noise, rng).to_image()
}

/// Sky painting and lit surfaces (with snow cover or wetness).
fn surfaces(scene: &Scene, look: &Look) -> Buf {
    let mut img = Buf::new(scene.width, scene.height);
    for (i, p) in scene.pixels.iter().enumerate() {
        img.px[i] = if p.class == class::SKY && p.depth >= super::scene::SKY_DEPTH {
            let [cloud, elevation, _] = p.albedo;
            mix(mix(look.sky[1], look.sky[0], elevation.powf(0.7)), look.sky[2], cloud)
        } else {
            let mut a = covered(p.albedo, p.class, p.flags, look.weather, i);
            if p.flags & SHADOW != 0 {
                a = a.map(|v| v * look.shadow);
            }
            let lift = if p.flags & TOP != 0 { 1.08 } else { 1.0 };
            mul(a, look.ambient).map(|v| v * lift)
        };
    }
    img
}

/// A surface's colour after the weather settled on it: snow whitens the ground, the
/// tops of things and partly the foliage; rain darkens the ground.
fn covered(a: [f32; 3], cls: u8, flags: u8, weather: Weather, i: usize) -> [f32; 3] {
    const SNOW: [f32; 3] = [0.93, 0.94, 0.96];
    let speckle = super::scene::hash01(0x5eed, i as i64, 0);
    match weather {
        Weather::Snow if flags & GROUND != 0 => {
            let cover = if cls == class::ROAD { 0.45 + 0.35 * speckle } else { 0.8 + 0.15 * speckle };
            mix(a, SNOW, cover)
        }
        Weather::Snow if flags & TOP != 0 => mix(a, SNOW, 0.85),
        Weather::Snow if cls == class::VEGETATION => mix(a, SNOW, 0.35 * speckle),
        Weather::Rain if flags & GROUND != 0 => a.map(|v| v * 0.6),
        _ => a,
    }
}

/// Emission of the light sources, their halos, and lamp pools on the ground.
fn light_sources(scene: &Scene, look: &Look, img: &mut Buf) {
    let mut glow = Buf::new(scene.width, scene.height);
    for (i, p) in scene.pixels.iter().enumerate() {
        if p.flags & EMISSIVE != 0 {
            let e = if p.class == class::BUILDING { [1.0, 0.8, 0.45] } else { p.albedo };
            img.px[i] = add(img.px[i], e, look.lights);
            glow.px[i] = e.map(|v| v * look.lights);
        }
    }
    let cam = scene.camera;
    for y in 0..scene.height {
        for x in 0..scene.width {
            let i = y * scene.width + x;
            let p = &scene.pixels[i];
            if p.flags & GROUND == 0 {
                continue;
            }
            let (gz, gx) = (p.depth as f64, (x as f64 + 0.5 - cam.vx) * p.depth as f64 / cam.f);
            for lamp in &scene.lamps {
                let d = ((gx - lamp.pos[0]).powi(2) + (gz - lamp.pos[2]).powi(2)).sqrt();
                if d < lamp.reach {
                    let k = (1.0 - d / lamp.reach).powi(2) as f32 * look.lights * 2.5;
                    img.px[i] = add(img.px[i], mul(p.albedo, lamp.color), k);
                }
            }
        }
    }
    let r = (scene.width / 64).max(1);
    let halo = glow.blur(r).blur(r);
    for (o, g) in img.px.iter_mut().zip(&halo.px) {
        *o = add(*o, *g, 1.2);
    }
}

/// Wet ground mirrors what stands on it: each ground pixel adds a share of the pixel
/// mirrored about the nearest contact line above it in its column, with ripples.
fn reflections(scene: &Scene, img: &mut Buf) {
    let src = img.clone();
    for x in 0..scene.width {
        let mut contact = None;
        for y in 0..scene.height {
            let i = y * scene.width + x;
            if scene.pixels[i].flags & GROUND == 0 {
                contact = Some(y);
                continue;
            }
            let Some(c) = contact else { continue };
            let ripple = (super::scene::hash01(0x7177, x as i64, y as i64) - 0.5) * 2.0;
            let mirrored = 2 * c as i64 - y as i64 + ripple.round() as i64;
            // Puddles and film are patchy: the mirror image fades away from the contact line.
            let fade = (-((y - c) as f32) / (0.12 * scene.height as f32)).exp();
            if mirrored >= 0 && (mirrored as usize) < scene.height {
                let m = src.px[mirrored as usize * scene.width + x];
                img.px[i] = add(img.px[i], m, 0.3 * fade);
            }
        }
    }
}

/// Koschmieder's law on every surface (the sky is painted with its own air-light).
fn atmosphere(scene: &Scene, look: &Look, img: &mut Buf) {
    let (beta, air) = look.fog;
    for (o, p) in img.px.iter_mut().zip(&scene.pixels) {
        if p.class == class::SKY && p.depth >= super::scene::SKY_DEPTH {
            continue;
        }
        let t = (-beta * p.depth).exp();
        *o = mix(air, *o, t);
    }
}

/// Falling rain: thin, slanted, faint streaks.
fn streaks(img: &mut Buf, rng: &mut Rng) {
    let n = img.w * img.h / 140;
    let len_scale = img.h as f64 / 96.0;
    for _ in 0..n {
        let (x0, y0) = (rng.uniform_range(0.0, img.w as f64), rng.uniform_range(-10.0, img.h as f64));
        let len = rng.uniform_range(4.0, 11.0) * len_scale;
        for k in 0..len as usize {
            let (x, y) = ((x0 + k as f64 * 0.25) as usize, (y0 + k as f64) as i64);
            if y >= 0 && (y as usize) < img.h && x < img.w {
                let i = y as usize * img.w + x;
                img.px[i] = mix(img.px[i], [0.8, 0.82, 0.86], 0.25);
            }
        }
    }
}

/// Falling snow: bright flakes of one or two pixels.
fn flakes(img: &mut Buf, rng: &mut Rng) {
    let n = img.w * img.h / 45;
    for _ in 0..n {
        let (x, y) = (rng.below(img.w as u64) as usize, rng.below(img.h as u64) as usize);
        let big = rng.uniform() < 0.25;
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().take(if big { 4 } else { 1 }) {
            let (xx, yy) = (x + dx, y + dy);
            if xx < img.w && yy < img.h {
                let i = yy * img.w + xx;
                img.px[i] = mix(img.px[i], [0.96, 0.97, 0.98], 0.85);
            }
        }
    }
}

/// The photographic treatments of the styles (on the day image).
fn photographic_style(img: Buf, style: Condition, rng: &mut Rng) -> Buf {
    let mut out = img.clone();
    match style {
        Condition::Sepia => out.px.iter_mut().for_each(|c| {
            let [r, g, b] = *c;
            *c = [0.393 * r + 0.769 * g + 0.189 * b, 0.349 * r + 0.686 * g + 0.168 * b, 0.272 * r + 0.534 * g + 0.131 * b];
        }),
        Condition::Overexposed => out.px.iter_mut().for_each(|c| *c = c.map(|v| (v * 2.0 + 0.15).min(1.0))),
        Condition::Monochrome => out.px.iter_mut().for_each(|c| *c = [luma(*c); 3]),
        Condition::Vintage => vintage(&mut out),
        Condition::Painterly => out = painterly(&img, rng),
        Condition::Noir => out.px.iter_mut().for_each(|c| *c = [((luma(*c) - 0.38) * 1.9 + 0.3).clamp(0.0, 1.0).powf(1.5); 3]),
        Condition::Misty => out = misty(&img),
        Condition::Neon => out.px.iter_mut().for_each(|c| *c = neon(*c)),
        Condition::Pastel => out.px.iter_mut().for_each(|c| {
            let l = luma(*c);
            *c = mul(c.map(|v| 0.55 + 0.45 * (l + (v - l) * 0.5)), [1.04, 0.97, 1.0]);
        }),
        Condition::PopArt => out.px.iter_mut().for_each(|c| {
            let l = luma(*c);
            *c = c.map(|v| ((l + (v - l) * 2.2).clamp(0.0, 1.0) * 2.0).round() / 2.0);
        }),
        _ => {}
    }
    out
}

/// A uniform luminous haze: 45 % lavender-white everywhere plus a soft glow.
fn misty(img: &Buf) -> Buf {
    let glow = img.blur((img.w / 40).max(1));
    let mut out = img.clone();
    for (o, g) in out.px.iter_mut().zip(&glow.px) {
        *o = add(mix(*o, [0.9, 0.88, 0.95], 0.45), *g, 0.2);
    }
    out
}

/// Dark split toning: shadows to deep blue-violet, highlights to magenta/cyan, saturated.
fn neon(c: [f32; 3]) -> [f32; 3] {
    let l = luma(c);
    let shadow = [0.08, 0.03, 0.18];
    let glow = if c[2] > c[0] { [0.1, 0.95, 1.0] } else { [1.0, 0.2, 0.85] };
    let k = (l * 1.4 - 0.25).clamp(0.0, 1.0);
    mix(shadow, glow, k * k)
}

fn vintage(img: &mut Buf) {
    let (cx, cy) = (img.w as f32 / 2.0, img.h as f32 / 2.0);
    for y in 0..img.h {
        for x in 0..img.w {
            let r2 = ((x as f32 - cx) / cx).powi(2) + ((y as f32 - cy) / cy).powi(2);
            let c = &mut img.px[y * img.w + x];
            let faded = c.map(|v| (v - 0.5) * 0.65 + 0.58);
            *c = mul(faded, [1.08, 1.0, 0.8]).map(|v| v * (1.0 - 0.22 * r2));
        }
    }
}

/// Smoothed, posterised, more saturated, with brush-like jitter of 3×3 blocks.
fn painterly(img: &Buf, rng: &mut Rng) -> Buf {
    let soft = img.blur(1);
    let mut out = Buf::new(img.w, img.h);
    for by in (0..img.h).step_by(3) {
        for bx in (0..img.w).step_by(3) {
            let (dx, dy) = (rng.below(3) as i64 - 1, rng.below(3) as i64 - 1);
            for y in by..(by + 3).min(img.h) {
                for x in bx..(bx + 3).min(img.w) {
                    let sx = (x as i64 + dx).clamp(0, img.w as i64 - 1) as usize;
                    let sy = (y as i64 + dy).clamp(0, img.h as i64 - 1) as usize;
                    let c = soft.px[sy * img.w + sx];
                    let l = luma(c);
                    let saturated = c.map(|v| l + (v - l) * 1.6);
                    out.px[y * img.w + x] = saturated.map(|v| (v.clamp(0.0, 1.0) * 5.0).round() / 5.0);
                }
            }
        }
    }
    out
}

/// Sensor noise (σ in 0..1 units, per channel).
fn sensor(mut img: Buf, sigma: f32, rng: &mut Rng) -> Buf {
    let normal = Normal::new(0.0f32, sigma).expect("positive sigma");
    for c in img.px.iter_mut() {
        *c = c.map(|v| v + normal.sample(rng));
    }
    img
}
