//! Random street layouts: the street's cross-section (road, lanes, grass verges, sidewalks,
//! set-backs), what lines it (buildings with windows, walls, fences, hedges, trees, a
//! second row of buildings or woods behind, the far end of the street), street
//! furniture (lamps, signs, traffic lights) and traffic (cars, trucks, buses, people,
//! cyclists), all in metres and projected by the scene's camera
//! ([`super::scene`]). Sizes are those of the real things, so the perspective alone
//! varies their image size; counts and positions are random per layout — except for
//! the thin things (poles, signs, traffic lights, people, riders, bicycles), which are
//! drawn [`THIN`] times wider and stand nearer than they would, and the camera's longer
//! lens: the world is a *scale model* of a 2 MP driving image at 128 × 96 pixels, so a
//! pole is a few pixels wide rather than one and a segmenter at output stride 16 sees
//! objects spanning cells, as the paper's at 768² crops does.

use super::scene::{class, hash01, jitter, Board, Camera, Lamp, Scene, Shade, EMISSIVE, GROUND, SHADOW, TOP};
use famix::rng::Rng;

/// The street's cross-section (lateral positions in metres, 0 under the camera).
#[derive(Debug, Clone, Copy)]
struct Street {
    /// Left and right road edges.
    road: (f64, f64),
    /// Grass verges between the kerb and the sidewalk, left and right (0: none).
    verge: (f64, f64),
    /// Sidewalk widths, left and right.
    walk: (f64, f64),
    /// Façade planes, left and right (beyond sidewalk and set-back).
    facade: (f64, f64),
    /// Lanes.
    lanes: usize,
    /// Texture seed (textures are functions of position, not of the random stream).
    tex: u64,
}

impl Street {
    fn random(rng: &mut Rng) -> Self {
        let road = (-rng.uniform_range(3.0, 6.5), rng.uniform_range(3.0, 6.5));
        let walk = (rng.uniform_range(1.8, 3.5), rng.uniform_range(1.8, 3.5));
        let mut verge = || if rng.uniform() < VERGE_CHANCE { rng.uniform_range(1.2, 3.0) } else { 0.0 };
        let verge = (verge(), verge());
        let mut setback = || if rng.uniform() < 0.4 { rng.uniform_range(1.0, 4.0) } else { 0.0 };
        let facade = (road.0 - verge.0 - walk.0 - setback(), road.1 + verge.1 + walk.1 + setback());
        let lanes = (((road.1 - road.0) / 3.2).floor() as usize).max(2);
        Street { road, verge, walk, facade, lanes, tex: rng.next_u64() }
    }
    fn lane_width(&self) -> f64 {
        (self.road.1 - self.road.0) / self.lanes as f64
    }
    fn lane_center(&self, i: usize) -> f64 {
        self.road.0 + (i as f64 + 0.5) * self.lane_width()
    }
    /// A side's (verge, sidewalk) widths: -1 left, 1 right.
    fn kerbside(&self, side: f64) -> (f64, f64) {
        if side < 0.0 {
            (self.verge.0, self.walk.0)
        } else {
            (self.verge.1, self.walk.1)
        }
    }
    /// Which side a lateral position is on: -1 left, 1 right.
    fn side_x(&self, side: f64, from_road: f64) -> f64 {
        if side < 0.0 {
            self.road.0 - from_road
        } else {
            self.road.1 + from_road
        }
    }
}

/// How many times wider than the real things the thin things are drawn (see the
/// module's doc).
pub const THIN: f64 = 2.5;

/// The chance that a side of the street has a grass verge between its kerb and its
/// sidewalk (as suburban streets do). Without verges, terrain lay only in the set-backs
/// before the façades, a strip too thin and too far to be the dominant class of any
/// 24-pixel mining patch, so no style could be mined for it.
const VERGE_CHANCE: f64 = 0.35;

/// Width of the kerb stone at the road's edge (sidewalk, as Cityscapes labels it).
const KERB: f64 = 0.2;

/// A random scene of `width` × `height` pixels.
pub fn generate(width: usize, height: usize, rng: &mut Rng) -> Scene {
    let camera = Camera {
        horizon: height as f64 * rng.uniform_range(0.36, 0.48),
        vx: width as f64 * rng.uniform_range(0.4, 0.6),
        f: width as f64 * rng.uniform_range(1.2, 1.6),
        height: rng.uniform_range(1.3, 1.8),
    };
    let mut scene = Scene::new(width, height, camera);
    let street = Street::random(rng);
    sky(&mut scene, street.tex);
    ground(&mut scene, &street);
    far_end(&mut scene, &street, rng);
    for side in [-1.0, 1.0] {
        back_row(&mut scene, &street, side, rng);
        front_row(&mut scene, &street, side, rng);
    }
    furniture(&mut scene, &street, rng);
    vehicles(&mut scene, &street, rng);
    people(&mut scene, &street, rng);
    cyclists(&mut scene, &street, rng);
    parked_bicycles(&mut scene, &street, rng);
    scene
}

/// Smooth value noise in [0, 1): bilinear between lattice values `scale` apart.
fn smooth(seed: u64, x: f64, y: f64, scale: f64) -> f32 {
    let (gx, gy) = (x / scale, y / scale);
    let (i, j) = (gx.floor() as i64, gy.floor() as i64);
    let (fx, fy) = ((gx - i as f64) as f32, (gy - j as f64) as f32);
    let a = hash01(seed, i, j) * (1.0 - fx) + hash01(seed, i + 1, j) * fx;
    let b = hash01(seed, i, j + 1) * (1.0 - fx) + hash01(seed, i + 1, j + 1) * fx;
    a * (1.0 - fy) + b * fy
}

fn scale(c: [f32; 3], k: f32) -> [f32; 3] {
    [(c[0] * k).min(1.0), (c[1] * k).min(1.0), (c[2] * k).min(1.0)]
}

/// Sky pixels: cloud cover from smooth noise, elevation above the horizon.
fn sky(scene: &mut Scene, tex: u64) {
    let (w, h) = (scene.width, scene.height);
    let horizon = scene.camera.horizon.max(1.0);
    let cover = hash01(tex, -7, -7) * 0.8;
    for y in 0..h {
        for x in 0..w {
            let n = smooth(tex ^ 0x51, x as f64, y as f64 * 2.5, w as f64 / 5.0);
            let cloud = ((n - (1.0 - cover)) * 3.0).clamp(0.0, 1.0);
            let elevation = (1.0 - y as f64 / horizon).clamp(0.0, 1.0) as f32;
            scene.pixels[y * w + x].albedo = [cloud, elevation, 0.0];
        }
    }
}

/// The ground plane: road with lane markings, sidewalks with tiles and kerbs, terrain.
fn ground(scene: &mut Scene, st: &Street) {
    let cam = scene.camera;
    let road_grey = 0.27 + hash01(st.tex, 1, 1) * 0.13;
    for y in (cam.horizon.ceil() as usize)..scene.height {
        let z = cam.ground_depth(y as f64 + 0.5);
        for x in 0..scene.width {
            let lx = (x as f64 + 0.5 - cam.vx) * z / cam.f;
            let (class, albedo) = ground_point(st, lx, z, road_grey);
            scene.put(x as i64, y as i64, z, class, (albedo, GROUND), 0);
        }
    }
}

fn ground_point(st: &Street, x: f64, z: f64, road_grey: f32) -> (u8, [f32; 3]) {
    let grain = smooth(st.tex ^ 0x61, x * 6.0, z * 6.0, 1.0) - 0.5;
    if x > st.road.0 && x < st.road.1 {
        let lw = st.lane_width();
        let rel = (x - st.road.0) / lw;
        let near_line = (rel - rel.round()).abs() * lw;
        let edge = rel.round() == 0.0 || rel.round() as usize == st.lanes;
        let dashed = (z / 6.0).fract() < 0.5;
        let line = if edge { near_line < 0.12 && (x - st.road.0).min(st.road.1 - x) > 0.15 } else { near_line < 0.07 && dashed };
        let g = if line { 0.85 } else { road_grey + grain * 0.06 };
        return (class::ROAD, [g, g, g * 1.02]);
    }
    let (side, from_road) = if x <= st.road.0 { (-1.0, st.road.0 - x) } else { (1.0, x - st.road.1) };
    let (verge, walk) = st.kerbside(side);
    if from_road >= KERB && from_road < verge {
        return terrain(st, x, z);
    }
    if from_road < verge + walk {
        let walk_in = if from_road < KERB { from_road } else { from_road - verge };
        let kerb = from_road < KERB;
        let seam = (z / 1.2).fract() < 0.06 || ((walk_in / 1.2).fract() < 0.06);
        let base = if kerb {
            0.72
        } else if seam {
            0.5
        } else {
            0.62 + grain * 0.05
        };
        return (class::SIDEWALK, [base, base * 0.97, base * 0.92]);
    }
    terrain(st, x, z)
}

/// Grass: verges and set-backs.
fn terrain(st: &Street, x: f64, z: f64) -> (u8, [f32; 3]) {
    let t = smooth(st.tex ^ 0x71, x * 2.0, z * 2.0, 1.0);
    (class::TERRAIN, [0.38 + t * 0.12, 0.5 + t * 0.1, 0.2 + t * 0.06])
}

/// The far end of the street: a row of buildings or woods across it.
fn far_end(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    let z = rng.uniform_range(120.0, 220.0);
    let mut x = st.facade.0 - 60.0;
    while x < st.facade.1 + 60.0 {
        let w = rng.uniform_range(8.0, 25.0);
        let h = rng.uniform_range(6.0, 35.0);
        let b = Board { x: x + w / 2.0, z, w, h, y0: 0.0 };
        if rng.uniform() < 0.3 {
            let tex = rng.next_u64();
            scene.board(b, class::VEGETATION, 0, &move |u, v| Some((foliage(tex, u * 20.0, v * 10.0), 0)));
        } else {
            let color = building_color(rng);
            scene.board(b, class::BUILDING, 0, &move |_, _| Some((color, 0)));
        }
        x += w;
    }
}

fn building_color(rng: &mut Rng) -> [f32; 3] {
    const PALETTE: [[f32; 3]; 6] =
        [[0.55, 0.32, 0.26], [0.74, 0.67, 0.55], [0.55, 0.55, 0.57], [0.8, 0.79, 0.76], [0.45, 0.5, 0.6], [0.66, 0.55, 0.4]];
    jitter(PALETTE[rng.below(PALETTE.len() as u64) as usize], 0.05, true, rng)
}

fn foliage(tex: u64, a: f64, b: f64) -> [f32; 3] {
    let n = smooth(tex, a, b, 1.0);
    [0.14 + n * 0.12, 0.3 + n * 0.18, 0.1 + n * 0.08]
}

/// A second row behind the façades: taller buildings or woods, seen through gaps.
fn back_row(scene: &mut Scene, st: &Street, side: f64, rng: &mut Rng) {
    let x = if side < 0.0 { st.facade.0 } else { st.facade.1 } + side * rng.uniform_range(8.0, 18.0);
    let mut z = 2.0;
    while z < 200.0 {
        let len = rng.uniform_range(10.0, 30.0);
        let h = rng.uniform_range(8.0, 30.0);
        if rng.uniform() < 0.3 {
            let tex = rng.next_u64();
            scene.facade(x, (z, z + len), (0.0, h * 0.6), class::VEGETATION, &move |z, y| (foliage(tex, z * 1.5, y * 1.5), 0));
        } else {
            let color = building_color(rng);
            let tex = rng.next_u64();
            scene.facade(x, (z, z + len), (0.0, h), class::BUILDING, &move |z, y| windows(tex, color, z, y, h));
        }
        z += len;
    }
}

/// A façade point: wall colour, or a window (some lit at night), roof line on top.
fn windows(tex: u64, color: [f32; 3], z: f64, y: f64, height: f64) -> Shade {
    if y > height - 0.3 {
        return (scale(color, 0.8), TOP);
    }
    let (col, floor) = ((z / 3.0).floor() as i64, (y / 3.0).floor() as i64);
    let in_window = (z / 3.0).fract() > 0.25 && (z / 3.0).fract() < 0.75 && (y / 3.0).fract() > 0.3 && (y / 3.0).fract() < 0.8;
    if in_window && y > 2.5 {
        let lit = hash01(tex, col, floor) < 0.45;
        return ([0.17, 0.21, 0.27], if lit { EMISSIVE } else { 0 });
    }
    let n = hash01(tex ^ 0x9, (z * 4.0) as i64, (y * 4.0) as i64) * 0.05;
    ([color[0] + n, color[1] + n, color[2] + n], 0)
}

/// The row along the sidewalk: buildings, walls, fences, hedges, or open gaps with trees.
fn front_row(scene: &mut Scene, st: &Street, side: f64, rng: &mut Rng) {
    let x = if side < 0.0 { st.facade.0 } else { st.facade.1 };
    let mut z = 1.0;
    while z < 150.0 {
        let pick = rng.uniform();
        let len = rng.uniform_range(5.0, 22.0);
        let span = (z, z + len);
        if pick < 0.45 {
            let (color, tex, h) = (building_color(rng), rng.next_u64(), rng.uniform_range(5.0, 22.0));
            scene.facade(x, span, (0.0, h), class::BUILDING, &move |z, y| windows(tex, color, z, y, h));
        } else if pick < 0.6 {
            let h = rng.uniform_range(1.5, 3.0);
            let tex = rng.next_u64();
            scene.facade(x, span, (0.0, h), class::WALL, &move |z, y| wall(tex, z, y, h));
        } else if pick < 0.75 {
            let h = rng.uniform_range(1.2, 2.2);
            let (bar, panel) = (jitter([0.33, 0.3, 0.28], 0.05, true, rng), jitter([0.52, 0.47, 0.4], 0.06, true, rng));
            scene.facade(x, span, (0.0, h), class::FENCE, &move |z, y| fence(bar, panel, z, y, h));
        } else if pick < 0.85 {
            let h = rng.uniform_range(1.0, 2.3);
            let tex = rng.next_u64();
            scene.facade(x, span, (0.0, h), class::VEGETATION, &move |z, y| {
                (foliage(tex, z * 3.0, y * 3.0), if y > h * 0.85 { TOP } else { 0 })
            });
        } else {
            for _ in 0..rng.below(3) + 1 {
                let tz = rng.uniform_range(span.0, span.1);
                tree(scene, x + side * rng.uniform_range(1.0, 6.0), tz, rng);
            }
        }
        z += len;
    }
}

fn wall(tex: u64, z: f64, y: f64, h: f64) -> Shade {
    let block = hash01(tex, (z / 1.0) as i64, (y / 0.5) as i64) * 0.06;
    let seam = (z / 1.0).fract() < 0.04 || (y / 0.5).fract() < 0.06;
    let g = if seam { 0.5 } else { 0.62 + block };
    ([g, g * 0.98, g * 0.94], if y > h - 0.15 { TOP } else { 0 })
}

fn fence(bar: [f32; 3], panel: [f32; 3], z: f64, y: f64, h: f64) -> Shade {
    let is_bar = (z / 0.3).fract() < 0.35 || y > h - 0.12;
    (if is_bar { bar } else { panel }, if y > h - 0.1 { TOP } else { 0 })
}

/// A tree: trunk and crown, both vegetation (as Cityscapes labels them).
fn tree(scene: &mut Scene, x: f64, z: f64, rng: &mut Rng) {
    let id = scene.instance(class::VEGETATION);
    let trunk_h = rng.uniform_range(1.8, 3.0);
    let bark = jitter([0.33, 0.24, 0.17], 0.04, false, rng);
    scene.board(Board { x, z, w: 0.3, h: trunk_h + 0.5, y0: 0.0 }, class::VEGETATION, id, &move |_, _| Some((bark, 0)));
    let (w, h) = (rng.uniform_range(2.5, 5.0), rng.uniform_range(3.0, 5.5));
    let tex = rng.next_u64();
    scene.ellipse(Board { x, z: z - 0.01, w, h, y0: trunk_h }, class::VEGETATION, id, &move |u, v| {
        (foliage(tex, u * 8.0, v * 8.0), if v > 0.7 { TOP } else { 0 })
    });
}

/// Lamps, sign posts and traffic lights along the kerbs.
fn furniture(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    for side in [-1.0, 1.0] {
        let mut z = rng.uniform_range(4.0, 14.0);
        while z < 60.0 {
            let x = st.side_x(side, 0.4);
            let kind = rng.uniform();
            if kind < 0.4 {
                street_lamp(scene, x, z, rng);
            } else if kind < 0.75 {
                sign_post(scene, x, z, rng);
            } else {
                traffic_light(scene, x, z, rng);
            }
            z += rng.uniform_range(8.0, 20.0);
        }
    }
}

fn pole(scene: &mut Scene, x: f64, z: f64, h: f64, w: f64) {
    let id = scene.instance(class::POLE);
    scene.board(Board { x, z, w, h, y0: 0.0 }, class::POLE, id, &|_, _| Some(([0.42, 0.43, 0.45], 0)));
}

fn street_lamp(scene: &mut Scene, x: f64, z: f64, rng: &mut Rng) {
    let h = rng.uniform_range(6.0, 8.5);
    pole(scene, x, z, h, 0.16 * THIN);
    let id = scene.instance(class::POLE);
    scene.board(Board { x, z: z - 0.05, w: 0.7 * THIN, h: 0.5, y0: h - 0.6 }, class::POLE, id, &|_, v| {
        Some(if v < 0.5 { ([0.92, 0.9, 0.82], EMISSIVE) } else { ([0.35, 0.36, 0.38], TOP) })
    });
    scene.lamps.push(Lamp { pos: [x, h, z], color: [1.0, 0.82, 0.55], reach: 7.0 });
}

fn sign_post(scene: &mut Scene, x: f64, z: f64, rng: &mut Rng) {
    let h = rng.uniform_range(2.2, 3.2);
    pole(scene, x, z, h, 0.1 * THIN);
    let id = scene.instance(class::TRAFFIC_SIGN);
    let b = Board { x, z: z - 0.05, w: 0.65 * THIN, h: 0.65 * THIN, y0: h - 0.1 };
    match rng.below(3) {
        0 => scene.ellipse(b, class::TRAFFIC_SIGN, id, &|u, v| {
            let ring = (u - 0.5).powi(2) + (v - 0.5).powi(2) > 0.12;
            (if ring { [0.8, 0.1, 0.1] } else { [0.92, 0.92, 0.92] }, 0)
        }),
        1 => scene.board(b, class::TRAFFIC_SIGN, id, &|u, v| {
            let arrow = (v - 0.5).abs() < 0.08 && u > 0.2 && u < 0.8;
            Some((if arrow { [0.95, 0.95, 0.95] } else { [0.1, 0.3, 0.75] }, 0))
        }),
        _ => scene.board(b, class::TRAFFIC_SIGN, id, &|u, v| {
            let inner = (u - 0.5).abs() + (v - 0.5).abs() < 0.5;
            inner.then_some(([0.95, 0.8, 0.1], 0))
        }),
    }
}

fn traffic_light(scene: &mut Scene, x: f64, z: f64, rng: &mut Rng) {
    // Signal heads at a pedestrian's eye level and above, as most European signals are
    // mounted: higher ones (the head is drawn THIN times taller than real) lie above the
    // frame at the distances where the kerb comes into view.
    let h = rng.uniform_range(2.8, 3.6);
    pole(scene, x, z, h, 0.15 * THIN);
    let id = scene.instance(class::TRAFFIC_LIGHT);
    let lit = rng.below(3) as f64;
    scene.board(Board { x, z: z - 0.05, w: 0.38 * THIN, h: 1.0 * THIN, y0: h - 0.2 }, class::TRAFFIC_LIGHT, id, &move |u, v| {
        let slot = (v * 3.0).floor().min(2.0);
        let centre = (u - 0.5).powi(2) + ((v * 3.0).fract() - 0.5).powi(2) < 0.1;
        let colors = [[0.1, 0.9, 0.3], [1.0, 0.75, 0.1], [1.0, 0.15, 0.1]];
        Some(match (centre, slot == lit) {
            (true, true) => (colors[slot as usize], EMISSIVE),
            (true, false) => ([0.2, 0.2, 0.2], 0),
            _ => ([0.1, 0.1, 0.11], if v > 0.95 { TOP } else { 0 }),
        })
    });
}

/// Cars in the lanes and parked at the kerbs, sometimes a truck or a bus.
fn vehicles(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    let n_moving = rng.below(5);
    for _ in 0..n_moving {
        let lane = rng.below(st.lanes as u64) as usize;
        let x = st.lane_center(lane) + rng.uniform_range(-0.3, 0.3);
        vehicle(scene, st, class::CAR, x, rng.uniform_range(6.0, 70.0), rng);
    }
    for _ in 0..rng.below(4) {
        let x = if rng.uniform() < 0.5 { st.road.0 + 1.1 } else { st.road.1 - 1.1 };
        vehicle(scene, st, class::CAR, x, rng.uniform_range(5.0, 50.0), rng);
    }
    for (cls, p) in [(class::TRUCK, 0.45), (class::BUS, 0.4)] {
        if rng.uniform() < p {
            let lane = rng.below(st.lanes as u64) as usize;
            vehicle(scene, st, cls, st.lane_center(lane), rng.uniform_range(10.0, 60.0), rng);
        }
    }
}

fn vehicle(scene: &mut Scene, st: &Street, cls: u8, x: f64, z: f64, rng: &mut Rng) {
    let (w, h) = match cls {
        class::CAR => (rng.uniform_range(1.65, 1.95), rng.uniform_range(1.35, 1.6)),
        class::TRUCK => (rng.uniform_range(2.3, 2.55), rng.uniform_range(3.0, 3.6)),
        _ => (2.55, rng.uniform_range(2.9, 3.2)),
    };
    const PAINT: [[f32; 3]; 7] =
        [[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.08, 0.08, 0.09], [0.55, 0.56, 0.58], [0.15, 0.4, 0.2], [0.9, 0.75, 0.2]];
    let paint = jitter(PAINT[rng.below(PAINT.len() as u64) as usize], 0.04, true, rng);
    // Left of the road's middle: oncoming (headlights); right: driving away (tail-lights).
    let oncoming = x < (st.road.0 + st.road.1) / 2.0;
    let light = if oncoming { [0.97, 0.96, 0.9] } else { [0.85, 0.08, 0.06] };
    let id = scene.instance(cls);
    let b = Board { x, z, w, h, y0: 0.0 };
    let window = match cls {
        class::CAR => (0.55, 0.9),
        class::TRUCK => (0.62, 0.85),
        _ => (0.45, 0.85),
    };
    scene.board(b, cls, id, &move |u, v| Some(vehicle_point(u, v, paint, light, window)));
    contact_shadow(scene, b);
    let reach = if oncoming { 9.0 } else { 2.5 };
    for dx in [-w * 0.38, w * 0.38] {
        scene.lamps.push(Lamp { pos: [x + dx, 0.6, z - 0.3], color: light, reach });
    }
}

fn vehicle_point(u: f64, v: f64, paint: [f32; 3], light: [f32; 3], window: (f64, f64)) -> Shade {
    if v < 0.17 && !(0.22..=0.78).contains(&u) {
        return ([0.05, 0.05, 0.05], 0);
    }
    if v > window.0 && v < window.1 && u > 0.09 && u < 0.91 {
        return ([0.14, 0.17, 0.21], 0);
    }
    if v > 0.3 && v < 0.43 && !(0.16..=0.84).contains(&u) {
        return (light, EMISSIVE);
    }
    if v > 0.2 && v < 0.29 && (0.4..0.6).contains(&u) {
        return ([0.9, 0.9, 0.85], 0);
    }
    (paint, if v > 0.93 { TOP } else { 0 })
}

/// Marks the ground just below a board as shadowed.
fn contact_shadow(scene: &mut Scene, b: Board) {
    let cam = scene.camera;
    let (x0, y) = cam.project(b.x - b.w / 2.0, 0.0, b.z);
    let (x1, _) = cam.project(b.x + b.w / 2.0, 0.0, b.z);
    let depth = (cam.f * 0.6 / b.z).ceil().max(1.0) as i64;
    for row in (y.round() as i64 - 1)..(y.round() as i64 + depth) {
        for col in x0.round() as i64..x1.round() as i64 {
            if row >= 0 && col >= 0 && (row as usize) < scene.height && (col as usize) < scene.width {
                let p = &mut scene.pixels[row as usize * scene.width + col as usize];
                if p.flags & GROUND != 0 {
                    p.flags |= SHADOW;
                }
            }
        }
    }
}

/// People on the sidewalks.
fn people(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    for _ in 0..rng.below(6) {
        let side = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
        let (verge, walk) = st.kerbside(side);
        let x = st.side_x(side, verge + rng.uniform_range(0.4, walk - 0.3));
        let z = rng.uniform_range(4.0, 30.0);
        let b = Board { x, z, w: 0.55 * THIN, h: rng.uniform_range(1.55, 1.9) * THIN.sqrt(), y0: 0.0 };
        figure(scene, b, class::PERSON, rng);
    }
}

/// A person-shaped figure (head, torso, legs); see-through elsewhere.
fn figure(scene: &mut Scene, b: Board, cls: u8, rng: &mut Rng) {
    let id = scene.instance(cls);
    let shirt = jitter([0.5, 0.4, 0.4], 0.35, true, rng);
    let pants = jitter([0.15, 0.15, 0.22], 0.08, true, rng);
    let skin = jitter([0.78, 0.6, 0.5], 0.12, false, rng);
    let legs_to = if cls == class::RIDER { 0.25 } else { 0.46 };
    scene.board(b, cls, id, &move |u, v| {
        let d = (u - 0.5).abs();
        if v > 0.86 {
            (d < 0.2).then_some((skin, if v > 0.96 { TOP } else { 0 }))
        } else if v > legs_to {
            (d < 0.44).then_some((shirt, 0))
        } else {
            (d > 0.04 && d < 0.3).then_some((pants, 0))
        }
    });
    contact_shadow(scene, Board { w: b.w * 0.8, ..b });
}

/// Cyclists near the right kerb: a rider (rider) on a bicycle (bicycle).
fn cyclists(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    if rng.uniform() > 0.4 {
        return;
    }
    let x = st.road.1 - rng.uniform_range(0.6, 1.2);
    let z = rng.uniform_range(6.0, 30.0);
    let id = scene.instance(class::BICYCLE);
    scene.board(Board { x, z, w: 0.6 * THIN, h: 1.05 * THIN.sqrt(), y0: 0.0 }, class::BICYCLE, id, &|u, v| {
        let wheel = (u - 0.5).abs() < 0.2 && v < 0.62;
        let bars = v > 0.88 && v < 0.97;
        (wheel || bars).then_some(([0.08, 0.08, 0.1], 0))
    });
    figure(scene, Board { x, z: z - 0.02, w: 0.5 * THIN, h: THIN.sqrt(), y0: 0.75 * THIN.sqrt() }, class::RIDER, rng);
}

/// A row of bicycles parked across a sidewalk (as in a rack), seen side-on. Labelled
/// as Cityscapes' polygons label them: the whole outline, wheels included (seen from
/// behind, a ridden bicycle is a thin strip under its rider).
fn parked_bicycles(scene: &mut Scene, st: &Street, rng: &mut Rng) {
    if rng.uniform() > 0.7 {
        return;
    }
    let side = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    let (verge, walk) = st.kerbside(side);
    let x = st.side_x(side, verge + walk * rng.uniform_range(0.35, 0.65));
    let mut z = rng.uniform_range(10.0, 30.0);
    for _ in 0..rng.below(4) + 2 {
        let paint = jitter([0.45, 0.2, 0.15], 0.3, true, rng);
        let id = scene.instance(class::BICYCLE);
        scene.board(Board { x, z, w: 1.75, h: 1.05, y0: 0.0 }, class::BICYCLE, id, &move |u, v| side_view(u, v, paint));
        z += rng.uniform_range(0.7, 1.0);
    }
}

/// A bicycle's side view on a 1.75 × 1.05 m board: two wheels (tyre, and the spokes
/// with the background behind them, in one grey), the frame between them, saddle and
/// handlebar on top.
fn side_view(u: f64, v: f64, paint: [f32; 3]) -> Option<Shade> {
    let (x, y) = (u * 1.75, v * 1.05);
    for cx in [0.38, 1.37] {
        let r = ((x - cx).powi(2) + (y - 0.35).powi(2)).sqrt();
        if r < 0.35 {
            return Some((if r > 0.29 { [0.08, 0.08, 0.1] } else { [0.4, 0.4, 0.42] }, 0));
        }
    }
    let frame =
        (0.5..1.3).contains(&x) && (0.35..0.8).contains(&y) && ((y - 0.75).abs() < 0.06 || (x - 0.38 - (y - 0.35) * 0.9).abs() < 0.07);
    let top = (y > 0.8 && y < 0.95) && ((0.45..0.7).contains(&x) || (1.15..1.35).contains(&x));
    (frame || top).then_some((paint, if top { TOP } else { 0 }))
}
