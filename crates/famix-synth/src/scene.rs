//! The geometry of one synthetic street scene, before any lighting or weather.
//!
//! A pinhole camera stands `height` metres above a flat ground plane and looks down a
//! straight street (the focal length is in pixels; the horizon and the vanishing point
//! are image coordinates). A world point (x lateral, y up, z depth) appears at
//! `(vx + f·x/z, horizon + f·(height − y)/z)`, so a ground point at depth z lies on
//! row `horizon + f·height/z`: rows near the horizon are far away, which is what makes
//! fog thicken towards the horizon and objects shrink with distance.
//!
//! The ground plane holds the road (with lane markings), the sidewalks and terrain;
//! façades, walls, fences and hedges are vertical planes parallel to the street;
//! vehicles, people, poles, signs, traffic lights and trees are upright rectangles
//! facing the camera. Everything is drawn with a depth test, so each pixel keeps the
//! class, depth and surface colour (albedo, display-space RGB in 0..1) of the nearest
//! surface, plus flags the conditions read: light sources (lit windows, lamps, head-
//! and tail-lights), upward-facing surfaces (where snow settles), the ground, and
//! contact shadows. Labels are Cityscapes train ids; the same layout gives the same
//! labels under every condition.

use famix::rng::Rng;

/// Depth of the sky (metres): "infinitely" far for fog.
pub const SKY_DEPTH: f32 = 1.0e4;

/// Pixel flag: a light source (glows at dusk and night).
pub const EMISSIVE: u8 = 1;
/// Pixel flag: the ground plane (road, sidewalk, terrain): wet in rain, white in snow.
pub const GROUND: u8 = 2;
/// Pixel flag: an upward-facing surface (roofs, tops of vehicles, crowns): snow settles.
pub const TOP: u8 = 4;
/// Pixel flag: ground in an object's contact shadow.
pub const SHADOW: u8 = 8;

/// Cityscapes train ids used by the generator.
pub mod class {
    /// road
    pub const ROAD: u8 = 0;
    /// sidewalk
    pub const SIDEWALK: u8 = 1;
    /// building
    pub const BUILDING: u8 = 2;
    /// wall
    pub const WALL: u8 = 3;
    /// fence
    pub const FENCE: u8 = 4;
    /// pole
    pub const POLE: u8 = 5;
    /// traffic light
    pub const TRAFFIC_LIGHT: u8 = 6;
    /// traffic sign
    pub const TRAFFIC_SIGN: u8 = 7;
    /// vegetation
    pub const VEGETATION: u8 = 8;
    /// terrain
    pub const TERRAIN: u8 = 9;
    /// sky
    pub const SKY: u8 = 10;
    /// person
    pub const PERSON: u8 = 11;
    /// rider
    pub const RIDER: u8 = 12;
    /// car
    pub const CAR: u8 = 13;
    /// truck
    pub const TRUCK: u8 = 14;
    /// bus
    pub const BUS: u8 = 15;
    /// bicycle
    pub const BICYCLE: u8 = 18;
}

/// Every class the generator draws (17 of Cityscapes' 19; no train, no motorcycle).
pub const CLASSES: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18];

/// The pinhole camera.
#[derive(Debug, Clone, Copy)]
pub struct Camera {
    /// Image row of the horizon.
    pub horizon: f64,
    /// Image column of the vanishing point.
    pub vx: f64,
    /// Focal length in pixels.
    pub f: f64,
    /// Height above the ground in metres.
    pub height: f64,
}

impl Camera {
    /// Image position of world point (x, y, z).
    pub fn project(&self, x: f64, y: f64, z: f64) -> (f64, f64) {
        (self.vx + self.f * x / z, self.horizon + self.f * (self.height - y) / z)
    }
    /// Depth of the ground seen at image row `row` (below the horizon).
    pub(crate) fn ground_depth(&self, row: f64) -> f64 {
        self.f * self.height / (row - self.horizon).max(1e-3)
    }
}

/// What one pixel shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pixel {
    /// Train id.
    pub class: u8,
    /// Depth in metres.
    pub depth: f32,
    /// Surface colour, RGB in 0..1. Sky pixels have no surface: theirs holds
    /// (cloud cover 0..1, elevation 0 at the horizon .. 1 at the top row, 0), and each
    /// condition paints its own sky from them.
    pub albedo: [f32; 3],
    /// [`EMISSIVE`], [`GROUND`], [`TOP`], [`SHADOW`].
    pub flags: u8,
    /// Object instance (0: none), for counting what a caption may mention.
    pub instance: u16,
}

/// A point light (street lamp, headlight, tail-light) and where it stands.
#[derive(Debug, Clone, Copy)]
pub struct Lamp {
    /// World position (x, y, z).
    pub pos: [f64; 3],
    /// Colour (RGB 0..1) and strength.
    pub color: [f32; 3],
    /// Reach on the ground in metres.
    pub reach: f64,
}

/// A drawn object (for captions).
#[derive(Debug, Clone, Copy)]
pub struct Instance {
    /// Its class.
    pub class: u8,
}

/// The geometry of a scene: a `width` × `height` buffer of [`Pixel`]s.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The camera.
    pub camera: Camera,
    /// Row-major pixels.
    pub pixels: Vec<Pixel>,
    /// Light sources that light their surroundings at dusk and night.
    pub lamps: Vec<Lamp>,
    /// Objects, indexed by `Pixel::instance − 1`.
    pub instances: Vec<Instance>,
}

/// An upright rectangle facing the camera: centre `x`, depth `z`, size in metres,
/// bottom `y0` metres above the ground.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    /// Lateral centre.
    pub x: f64,
    /// Depth.
    pub z: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
    /// Height of the bottom edge above the ground.
    pub y0: f64,
}

/// A surface's look at a point: albedo and flags.
pub type Shade = ([f32; 3], u8);

impl Scene {
    /// An empty scene (cloudless sky everywhere).
    pub fn new(width: usize, height: usize, camera: Camera) -> Self {
        let sky = Pixel { class: class::SKY, depth: SKY_DEPTH, albedo: [0.0; 3], flags: 0, instance: 0 };
        Scene { width, height, camera, pixels: vec![sky; width * height], lamps: vec![], instances: vec![] }
    }

    /// The pixel at (x, y).
    pub fn at(&self, x: usize, y: usize) -> &Pixel {
        &self.pixels[y * self.width + x]
    }

    /// Writes a surface point if it is nearer than what the pixel shows.
    pub fn put(&mut self, x: i64, y: i64, z: f64, class: u8, shade: Shade, instance: u16) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 {
            return;
        }
        let p = &mut self.pixels[y as usize * self.width + x as usize];
        if (z as f32) < p.depth {
            *p = Pixel { class, depth: z as f32, albedo: shade.0, flags: shade.1, instance };
        }
    }

    /// Registers an object and returns its instance number.
    pub fn instance(&mut self, class: u8) -> u16 {
        self.instances.push(Instance { class });
        self.instances.len().min(u16::MAX as usize) as u16
    }

    /// Draws an upright rectangle; `shade(u, v)` with u ∈ [0, 1] left to right and
    /// v ∈ [0, 1] bottom to top gives each point's look (None: see-through).
    pub(crate) fn board(&mut self, b: Board, class: u8, instance: u16, shade: &dyn Fn(f64, f64) -> Option<Shade>) {
        let cam = self.camera;
        let (x0, y_top) = cam.project(b.x - b.w / 2.0, b.y0 + b.h, b.z);
        let (x1, y_bot) = cam.project(b.x + b.w / 2.0, b.y0, b.z);
        let (px0, px1) = (x0.round() as i64, (x1.round() as i64).max(x0.round() as i64 + 1));
        let (py0, py1) = (y_top.round() as i64, (y_bot.round() as i64).max(y_top.round() as i64 + 1));
        for y in py0..py1 {
            let v = 1.0 - (y as f64 + 0.5 - y_top) / (y_bot - y_top).max(1e-6);
            for x in px0..px1 {
                let u = (x as f64 + 0.5 - x0) / (x1 - x0).max(1e-6);
                if let Some(s) = shade(u.clamp(0.0, 1.0), v.clamp(0.0, 1.0)) {
                    self.put(x, y, b.z, class, s, instance);
                }
            }
        }
    }

    /// Draws the ellipse inscribed in a board (tree crowns, round signs).
    pub(crate) fn ellipse(&mut self, b: Board, class: u8, instance: u16, shade: &dyn Fn(f64, f64) -> Shade) {
        self.board(b, class, instance, &|u, v| ((u - 0.5).powi(2) + (v - 0.5).powi(2) <= 0.25).then(|| shade(u, v)));
    }

    /// Draws a vertical plane parallel to the street at lateral position `x_plane`,
    /// between depths `z0` and `z1` and heights `y0` and `y1` (metres); `shade(z, y)`
    /// gives each point's look.
    pub(crate) fn facade(
        &mut self,
        x_plane: f64,
        (z0, z1): (f64, f64),
        (y0, y1): (f64, f64),
        class: u8,
        shade: &dyn Fn(f64, f64) -> Shade,
    ) {
        let cam = self.camera;
        let (xa, _) = cam.project(x_plane, 0.0, z0);
        let (xb, _) = cam.project(x_plane, 0.0, z1);
        let (c0, c1) = (xa.min(xb).floor() as i64, xa.max(xb).ceil() as i64);
        for x in c0.max(0)..c1.min(self.width as i64) {
            let dx = x as f64 + 0.5 - cam.vx;
            if dx == 0.0 || dx.signum() != x_plane.signum() {
                continue;
            }
            let z = cam.f * x_plane / dx;
            if !(z0..=z1).contains(&z) {
                continue;
            }
            let top = cam.horizon + cam.f * (cam.height - y1) / z;
            let bot = cam.horizon + cam.f * (cam.height - y0) / z;
            for y in top.round() as i64..bot.round() as i64 {
                let wy = cam.height - (y as f64 + 0.5 - cam.horizon) * z / cam.f;
                self.put(x, y, z, class, shade(z, wy), 0);
            }
        }
    }

    /// Train ids as a one-channel image.
    pub fn labels(&self) -> famix::imageops::Image8 {
        let data = self.pixels.iter().map(|p| p.class).collect();
        famix::imageops::Image8 { width: self.width, height: self.height, channels: 1, data }
    }

    /// Visible pixels per instance.
    pub(crate) fn visible_pixels(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.instances.len()];
        for p in &self.pixels {
            if p.instance > 0 {
                n[p.instance as usize - 1] += 1;
            }
        }
        n
    }
}

/// A colour jittered by ±`amount` per channel (same factor on all channels when
/// `tint` is false).
pub fn jitter(c: [f32; 3], amount: f64, tint: bool, rng: &mut Rng) -> [f32; 3] {
    let g = rng.uniform_range(-amount, amount) as f32;
    let mut out = c;
    for v in &mut out {
        let d = if tint { rng.uniform_range(-amount, amount) as f32 } else { g };
        *v = (*v + d).clamp(0.0, 1.0);
    }
    out
}

/// Deterministic value noise in [0, 1) at integer lattice point (i, j) for a texture
/// `seed` (textures must not consume the layout's random stream per pixel).
pub(crate) fn hash01(seed: u64, i: i64, j: i64) -> f32 {
    famix::rng::hash_unit(seed, i as u64, j as u64) as f32
}
