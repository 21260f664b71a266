//! Label spaces: the 19 Cityscapes train ids (names, palette) and each dataset's
//! conversion from its own label ids (docs/src/design.md §6). 255 = ignore.

/// The ignore label.
pub const IGNORE: u8 = 255;

/// The 19 Cityscapes train-id class names.
pub const CITYSCAPES_CLASSES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The Cityscapes label id of each train id (what the Cityscapes and ACDC benchmark
/// servers expect); the ignore train id maps to 0 ("unlabeled").
pub const CITYSCAPES_LABEL_IDS: [u8; 19] = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33];

/// Cityscapes' colour palette for the 19 classes.
pub const CITYSCAPES_PALETTE: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

/// A 256-entry lookup table from a dataset's label values to train ids.
pub type LabelMap = [u8; 256];

fn table(pairs: &[(u8, u8)]) -> LabelMap {
    let mut t = [IGNORE; 256];
    for &(k, v) in pairs {
        t[k as usize] = v;
    }
    t
}

/// Cityscapes label ids → train ids (the official table; GTA5 and ACDC use it too).
pub fn cityscapes_map() -> LabelMap {
    table(&[
        (7, 0),
        (8, 1),
        (11, 2),
        (12, 3),
        (13, 4),
        (17, 5),
        (19, 6),
        (20, 7),
        (21, 8),
        (22, 9),
        (23, 10),
        (24, 11),
        (25, 12),
        (26, 13),
        (27, 14),
        (28, 15),
        (31, 16),
        (32, 17),
        (33, 18),
    ])
}

/// Mapillary Vistas v1.2 (66 classes) → Cityscapes train ids.
pub(crate) fn mapillary_map() -> LabelMap {
    table(&[
        (13, 0),
        (24, 0),
        (41, 0),
        (2, 1),
        (15, 1),
        (17, 2),
        (6, 3),
        (3, 4),
        (45, 5),
        (47, 5),
        (48, 6),
        (50, 7),
        (30, 8),
        (29, 9),
        (27, 10),
        (19, 11),
        (20, 12),
        (21, 12),
        (22, 12),
        (55, 13),
        (61, 14),
        (54, 15),
        (58, 16),
        (57, 17),
        (52, 18),
    ])
}

/// Synthia RAND-CITYSCAPES class ids (channel 0 of the 16-bit GT) → train ids.
pub(crate) fn synthia_map() -> LabelMap {
    table(&[
        (1, 10),
        (2, 2),
        (3, 0),
        (4, 1),
        (5, 4),
        (6, 8),
        (7, 5),
        (8, 13),
        (9, 7),
        (10, 11),
        (11, 18),
        (12, 17),
        (15, 6),
        (16, 9),
        (17, 12),
        (18, 14),
        (19, 15),
        (20, 16),
        (21, 3),
    ])
}

/// Labels that are already train ids (BDD100K, the generic folder dataset).
pub(crate) fn identity_map() -> LabelMap {
    let mut t = [IGNORE; 256];
    for (i, v) in t.iter_mut().enumerate().take(19) {
        *v = i as u8;
    }
    t
}

/// Class names for `n` classes: Cityscapes' for the first 19, `class<i>` beyond.
pub fn default_class_names(n: usize) -> Vec<String> {
    (0..n).map(|i| CITYSCAPES_CLASSES.get(i).map(|s| s.to_string()).unwrap_or_else(|| format!("class{i}"))).collect()
}

/// Cityscapes colours for the first 19 classes, then a deterministic spread.
pub(crate) fn default_palette(n: usize) -> Vec<[u8; 3]> {
    (0..n)
        .map(|i| {
            CITYSCAPES_PALETTE.get(i).copied().unwrap_or_else(|| {
                let h = (i as u32).wrapping_mul(2654435761);
                [(h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8]
            })
        })
        .collect()
}
