//! Captions of synthetic scenes for the demo CLIP's world: the condition's word and
//! what is visible, in the segmentation's class names ("a foggy street with two cars,
//! a person and vegetation."). Things are counted by visible instances, stuff is
//! named when it covers enough of the image.

use super::scene::{class, Scene};
use super::Condition;
use famix::rng::Rng;

/// Thing classes: (train id, singular, plural).
const THINGS: [(u8, &str, &str); 9] = [
    (class::CAR, "car", "cars"),
    (class::PERSON, "person", "persons"),
    (class::TRUCK, "truck", "trucks"),
    (class::BUS, "bus", "buses"),
    (class::RIDER, "rider", "riders"),
    (class::BICYCLE, "bicycle", "bicycles"),
    (class::TRAFFIC_LIGHT, "traffic light", "traffic lights"),
    (class::TRAFFIC_SIGN, "traffic sign", "traffic signs"),
    (class::POLE, "pole", "poles"),
];

/// Stuff classes named when they cover at least 3 % of the image.
const STUFF: [(u8, &str); 8] = [
    (class::ROAD, "road"),
    (class::SIDEWALK, "sidewalk"),
    (class::BUILDING, "building"),
    (class::WALL, "wall"),
    (class::FENCE, "fence"),
    (class::VEGETATION, "vegetation"),
    (class::TERRAIN, "terrain"),
    (class::SKY, "sky"),
];

/// Smallest visible size (pixels) of an object a caption counts.
const MIN_VISIBLE: usize = 6;

fn count_phrase(n: usize, one: &str, many: &str) -> String {
    match n {
        1 => format!("a {one}"),
        2 => format!("two {many}"),
        3 => format!("three {many}"),
        _ => format!("many {many}"),
    }
}

/// What a caption can mention in `scene`.
pub fn mentions(scene: &Scene) -> Vec<String> {
    let visible = scene.visible_pixels();
    let mut out = Vec::new();
    for (cls, one, many) in THINGS {
        let n = scene.instances.iter().zip(&visible).filter(|(i, &v)| i.class == cls && v >= MIN_VISIBLE).count();
        if n > 0 {
            out.push(count_phrase(n, one, many));
        }
    }
    let total = scene.pixels.len().max(1);
    for (cls, name) in STUFF {
        let n = scene.pixels.iter().filter(|p| p.class == cls).count();
        if n * 100 >= total * 3 {
            out.push(name.to_string());
        }
    }
    out
}

/// "a, b and c".
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A caption of `scene` under `condition`: up to four of its mentions in random order,
/// in one of a few sentence shapes.
pub fn caption(scene: &Scene, condition: Condition, rng: &mut Rng) -> String {
    let mut m = mentions(scene);
    rng.shuffle(&mut m);
    m.truncate(1 + rng.below(4) as usize);
    let word = condition.word();
    if m.is_empty() {
        return format!("a {word} street.");
    }
    let list = join(&m);
    match rng.below(4) {
        0 => format!("a {word} street with {list}."),
        1 => format!("a {word} photo of {list}."),
        2 => format!("{list} on a {word} street."),
        _ => format!("a {word} scene with {list}."),
    }
}
