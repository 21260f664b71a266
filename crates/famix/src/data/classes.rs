//! Class sets: which classes a segmenter predicts, what they are called, the words
//! the style prompts use for them, their colours, and how label files encode them
//! (docs/src/classes.md).
//!
//! A class set is written once as a JSON *class file* and travels with everything
//! made from it: the checkpoint, the style bank and the ONNX metadata record it, and
//! a command given one of them refuses another class set, naming the difference.
//! Cityscapes' 19 train ids are the built-in set ([`ClassSet::cityscapes`]).
//!
//! Label files encode a class either as an integer (`"encoding": "ids"`: the class's
//! `id`, by default its index; grey or palette PNGs) or as a colour (`"rgb"`: the
//! class's `color`; RGB PNGs). Values listed in `ignore` (ids, or colours) mean "not
//! labelled". A value that no class declares is an error that names the file and the
//! value, unless the file says `"unknown": "ignore"`.
//!
//! Training ids are the classes' indices (0..K) and 255 for ignore, so at most 255
//! classes fit.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::labels::{default_class_names, default_palette, LabelMap, IGNORE};
use crate::error::{fail, Context, Error, Result};

/// The `format` of class files.
pub const FORMAT: &str = "famix-classes/1";

/// One class of a class set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassDef {
    /// The class's name: the key of its styles in a bank, the word in tables and legends.
    pub name: String,
    /// What the style prompts say for this class when the name is not what CLIP
    /// should read (e.g. "paved road" for "road_surface").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Its colour in predictions and legends, and its value in RGB-encoded labels.
    #[serde(alias = "colour")]
    pub color: [u8; 3],
    /// Its value in id-encoded labels (default: the class's index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u8>,
}

/// How label files encode classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LabelEncoding {
    /// One integer per pixel (8-bit grey or palette PNG): the class's `id`.
    #[default]
    Ids,
    /// One colour per pixel (RGB PNG): the class's `color`.
    Rgb,
}

/// What a label value that no class declares means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownLabels {
    /// An error naming the file and the value (the default for class files).
    #[default]
    Error,
    /// Not labelled (the built-in Cityscapes set's behaviour on `folder` datasets).
    Ignore,
}

/// An ignored label value: an id, or a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IgnoreValue {
    /// An id (ids encoding).
    Id(u8),
    /// A colour (RGB encoding).
    Color([u8; 3]),
}

fn default_ignore() -> Vec<IgnoreValue> {
    vec![IgnoreValue::Id(IGNORE)]
}

/// A class set (the content of a class file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSet {
    /// Always [`FORMAT`] in files famix writes; optional in files people write.
    #[serde(default = "format_name")]
    pub format: String,
    /// The classes, in training-id order.
    pub classes: Vec<ClassDef>,
    /// How label files encode them.
    #[serde(default)]
    pub encoding: LabelEncoding,
    /// Label values that mean "not labelled" (ids, or colours for RGB; default `[255]`).
    #[serde(default = "default_ignore")]
    pub ignore: Vec<IgnoreValue>,
    /// What an undeclared label value means.
    #[serde(default)]
    pub unknown: UnknownLabels,
}

fn format_name() -> String {
    FORMAT.into()
}

impl ClassSet {
    /// Cityscapes' 19 train ids: names, colours, id-encoded labels, 255 = ignore,
    /// other values ignored (what `folder` datasets have always meant).
    pub fn cityscapes() -> Self {
        Self::from_names(default_class_names(19), default_palette(19))
    }

    /// `n` classes named and coloured as before class files existed: Cityscapes' for
    /// the first 19, `class<i>` beyond (`--num-classes`, older checkpoints).
    pub fn default_for(n: usize) -> Self {
        Self::from_names(default_class_names(n), default_palette(n))
    }

    /// Id-encoded classes `0..n` with these names and colours; undeclared values ignored.
    pub(crate) fn from_names(names: Vec<String>, palette: Vec<[u8; 3]>) -> Self {
        ClassSet {
            format: FORMAT.into(),
            classes: names.into_iter().zip(palette).map(|(name, color)| ClassDef { name, prompt: None, color, id: None }).collect(),
            encoding: LabelEncoding::Ids,
            ignore: default_ignore(),
            unknown: UnknownLabels::Ignore,
        }
    }

    /// The same set with these names (as many as it has classes).
    pub fn renamed(mut self, names: &[String]) -> Self {
        for (c, n) in self.classes.iter_mut().zip(names) {
            c.name = n.clone();
        }
        self
    }

    /// This set when it is not Cityscapes' built-in one: what banks and mining runs
    /// record (a bank without a class set holds Cityscapes' classes).
    pub(crate) fn unless_cityscapes(&self) -> Option<&ClassSet> {
        (*self != ClassSet::cityscapes()).then_some(self)
    }

    /// Reads and checks a class file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read class file {}", path.display()))?;
        let set: ClassSet =
            serde_json::from_str(&text).map_err(|e| Error::invalid_input(path, format!("{}: not a class file: {e}", path.display())))?;
        set.validate().map_err(|e| Error::invalid_input(path, format!("{}: {e}", path.display())))?;
        Ok(set)
    }

    /// Checks names, ids, colours and ignore values; the message names the class.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format {:?} is not {FORMAT:?}", self.format));
        }
        if self.classes.is_empty() || self.classes.len() > 255 {
            return Err(format!("{} classes; a class set has 1 to 255", self.classes.len()));
        }
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, c) in self.classes.iter().enumerate() {
            if c.name.trim().is_empty() || c.name == "255" || c.name.contains('/') {
                return Err(format!("class {i}: name {:?} is empty, \"255\" or contains '/'", c.name));
            }
            if c.prompt.as_ref().is_some_and(|p| p.trim().is_empty()) {
                return Err(format!("class {i} ({}): empty prompt", c.name));
            }
            if let Some(j) = names.insert(c.name.as_str(), i) {
                return Err(format!("classes {j} and {i} are both named {:?}", c.name));
            }
            let v = self.label_value(i);
            if let Some(j) = values.insert(v.clone(), i) {
                return Err(format!("classes {j} and {i} ({}) have the same label value {v}", c.name));
            }
            if self.ignores(&v) {
                return Err(format!("class {i} ({}): label value {v} is also listed in ignore", c.name));
            }
        }
        self.check_ignore()
    }

    fn check_ignore(&self) -> std::result::Result<(), String> {
        for v in &self.ignore {
            match (self.encoding, v) {
                (LabelEncoding::Ids, IgnoreValue::Id(_)) | (LabelEncoding::Rgb, IgnoreValue::Color(_)) => {}
                (LabelEncoding::Ids, IgnoreValue::Color(c)) => {
                    return Err(format!("ignore value {c:?} is a colour but the encoding is ids"))
                }
                (LabelEncoding::Rgb, IgnoreValue::Id(i)) if *i == IGNORE && self.ignore.len() == 1 => {
                    return Err(
                        "RGB-encoded labels need their ignore colours listed (e.g. \"ignore\": [[0, 0, 0]]), or \"ignore\": []".into()
                    )
                }
                (LabelEncoding::Rgb, IgnoreValue::Id(i)) => return Err(format!("ignore value {i} is an id but the encoding is rgb")),
            }
        }
        Ok(())
    }

    /// The value class `i` has in label files, in words ("7", "128,64,128").
    fn label_value(&self, i: usize) -> String {
        let c = &self.classes[i];
        match self.encoding {
            LabelEncoding::Ids => c.id.unwrap_or(i as u8).to_string(),
            LabelEncoding::Rgb => rgb_words(c.color),
        }
    }

    fn ignores(&self, value: &str) -> bool {
        self.ignore.iter().any(|v| match v {
            IgnoreValue::Id(i) => self.encoding == LabelEncoding::Ids && i.to_string() == value,
            IgnoreValue::Color(c) => self.encoding == LabelEncoding::Rgb && rgb_words(*c) == value,
        })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// No classes (never true of a validated set).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The names, in training-id order.
    pub fn names(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.name.clone()).collect()
    }

    /// The colours, in training-id order.
    pub fn palette(&self) -> Vec<[u8; 3]> {
        self.classes.iter().map(|c| c.color).collect()
    }

    /// What the prompts say for each class: its prompt, else its name.
    pub(crate) fn prompt_words(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.prompt.clone().unwrap_or_else(|| c.name.clone())).collect()
    }

    /// Is this the set a model had before class files existed (names and colours of
    /// [`ClassSet::default_for`], no prompts, id-encoded, undeclared values ignored)?
    /// Such sets are not written into checkpoints and banks, which stay as they were.
    pub fn is_default(&self) -> bool {
        *self == Self::default_for(self.len())
    }

    /// Do two sets name, colour and prompt the same classes in the same order? Label
    /// encoding may differ (the same classes stored differently by another dataset).
    /// The error lists the differences.
    pub(crate) fn same_classes(&self, other: &ClassSet) -> std::result::Result<(), String> {
        let mut diffs = Vec::new();
        if self.len() != other.len() {
            diffs.push(format!("{} classes vs {}", self.len(), other.len()));
        }
        for (i, (a, b)) in self.classes.iter().zip(&other.classes).enumerate() {
            if a.name != b.name {
                diffs.push(format!("class {i} is {:?} vs {:?}", a.name, b.name));
            } else if a.prompt != b.prompt {
                diffs.push(format!("class {i} ({}) has prompt {:?} vs {:?}", a.name, a.prompt, b.prompt));
            } else if a.color != b.color {
                diffs.push(format!("class {i} ({}) has colour {:?} vs {:?}", a.name, a.color, b.color));
            }
        }
        if diffs.is_empty() {
            return Ok(());
        }
        let more = diffs.len().saturating_sub(5);
        diffs.truncate(5);
        Err(format!("{}{}", diffs.join("; "), if more > 0 { format!("; and {more} more") } else { String::new() }))
    }

    /// The decoder of this set's label files.
    pub fn codec(&self) -> LabelCodec {
        let strict = self.unknown == UnknownLabels::Error;
        match self.encoding {
            LabelEncoding::Ids => {
                let mut map = [IGNORE; 256];
                let mut known = [false; 256];
                for v in &self.ignore {
                    if let IgnoreValue::Id(i) = v {
                        known[*i as usize] = true;
                    }
                }
                for (i, c) in self.classes.iter().enumerate() {
                    let v = c.id.unwrap_or(i as u8) as usize;
                    (map[v], known[v]) = (i as u8, true);
                }
                LabelCodec::Ids { map: Box::new(map), known: Box::new(known), strict }
            }
            LabelEncoding::Rgb => {
                let mut colors: HashMap<[u8; 3], u8> = self.classes.iter().enumerate().map(|(i, c)| (c.color, i as u8)).collect();
                for v in &self.ignore {
                    if let IgnoreValue::Color(c) = v {
                        colors.insert(*c, IGNORE);
                    }
                }
                LabelCodec::Rgb { colors, strict }
            }
        }
    }
}

/// The class set to read labels with for a model (or bank) at `owner` whose classes
/// are `own`: `given`, a set read from the class file `file`, when it has the same
/// classes (its label encoding may differ), else `own`. A `given` set of other
/// classes is an error listing the differences.
pub fn agree(own: &ClassSet, given: Option<(&Path, ClassSet)>, owner: &Path) -> Result<ClassSet> {
    let Some((file, set)) = given else { return Ok(own.clone()) };
    if let Err(d) = set.same_classes(own) {
        fail!(
            Incompatible,
            file,
            "{}: these classes are not the ones {} has: {d} (class file vs {}); leave the class file out to use its own",
            file.display(),
            owner.display(),
            owner.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        );
    }
    Ok(set)
}

fn rgb_words(c: [u8; 3]) -> String {
    format!("{},{},{}", c[0], c[1], c[2])
}

/// Turns a label file's values into training ids (0..K, 255 = ignore).
#[derive(Debug, Clone)]
pub enum LabelCodec {
    /// Integer labels: a lookup table, which values are declared, and whether an
    /// undeclared one is an error (else it maps to ignore).
    Ids {
        /// Value → training id.
        map: Box<LabelMap>,
        /// Values a class or the ignore list declares.
        known: Box<[bool; 256]>,
        /// Undeclared values are errors.
        strict: bool,
    },
    /// Colour labels: colour → training id (ignore colours → 255).
    Rgb {
        /// Declared colours.
        colors: HashMap<[u8; 3], u8>,
        /// Undeclared colours are errors.
        strict: bool,
    },
}

/// What one label file holds: pixels per training id (index 255 = ignore) and the
/// undeclared values with their pixel counts (keys in words: "7", "12,34,56").
#[derive(Debug, Clone)]
pub struct LabelCounts {
    /// Pixels per training id; index 255 counts ignore and tolerated undeclared values.
    pub pixels: [u64; 256],
    /// Undeclared values → pixels.
    pub unknown: std::collections::BTreeMap<String, u64>,
}

impl LabelCodec {
    /// A dataset layout's built-in table (`known`: the values the layout defines).
    pub fn table(map: LabelMap, known: &dyn Fn(u8) -> bool) -> Self {
        let mut k = [false; 256];
        for (v, slot) in k.iter_mut().enumerate() {
            *slot = known(v as u8);
        }
        LabelCodec::Ids { map: Box::new(map), known: Box::new(k), strict: false }
    }

    /// Are labels colour images?
    pub(crate) fn is_rgb(&self) -> bool {
        matches!(self, LabelCodec::Rgb { .. })
    }

    /// Are undeclared values errors (else they map to ignore)?
    pub fn strict(&self) -> bool {
        match self {
            LabelCodec::Ids { strict, .. } | LabelCodec::Rgb { strict, .. } => *strict,
        }
    }

    /// Training ids of a decoded label (`raw`: one byte per pixel for ids, three for RGB)
    /// in one pass. Undeclared values are an error naming `path` when strict.
    pub fn decode(&self, raw: &[u8], path: &Path) -> Result<Vec<u8>> {
        let mut undeclared = false;
        let ids: Vec<u8> = match self {
            LabelCodec::Ids { map, known, .. } => raw
                .iter()
                .map(|&v| {
                    undeclared |= !known[v as usize];
                    map[v as usize]
                })
                .collect(),
            LabelCodec::Rgb { colors, .. } => raw
                .chunks_exact(3)
                .map(|p| {
                    colors.get(p).copied().unwrap_or_else(|| {
                        undeclared = true;
                        IGNORE
                    })
                })
                .collect(),
        };
        if undeclared && self.strict() {
            // Only a refused label pays for the count that names its values.
            fail!(InvalidInput, path, "{}", undeclared_message(path, &self.count(raw).unknown));
        }
        Ok(ids)
    }

    /// Counts a decoded label's pixels per training id and its undeclared values.
    pub fn count(&self, raw: &[u8]) -> LabelCounts {
        let mut pixels = [0u64; 256];
        let mut unknown = std::collections::BTreeMap::new();
        match self {
            LabelCodec::Ids { map, known, .. } => {
                let mut by_value = [0u64; 256];
                raw.iter().for_each(|&v| by_value[v as usize] += 1);
                for (v, &n) in by_value.iter().enumerate().filter(|(_, n)| **n > 0) {
                    pixels[map[v] as usize] += n;
                    if !known[v] {
                        unknown.insert(v.to_string(), n);
                    }
                }
            }
            LabelCodec::Rgb { colors, .. } => {
                let mut by_colour: HashMap<[u8; 3], u64> = HashMap::new();
                raw.chunks_exact(3).for_each(|p| *by_colour.entry([p[0], p[1], p[2]]).or_default() += 1);
                for (c, n) in by_colour {
                    match colors.get(&c) {
                        Some(&id) => pixels[id as usize] += n,
                        None => {
                            pixels[IGNORE as usize] += n;
                            unknown.insert(rgb_words(c), n);
                        }
                    }
                }
            }
        }
        LabelCounts { pixels, unknown }
    }
}

/// "label X has values no class declares: 7 (12 pixels), ..." — the words `data check`
/// and training share.
pub fn undeclared_message(path: &Path, unknown: &std::collections::BTreeMap<String, u64>) -> String {
    let list: Vec<String> = unknown.iter().take(8).map(|(v, n)| format!("{v} ({n} pixels)")).collect();
    format!(
        "label {} has values no class declares: {}{} (declare them in the class file, list them in \"ignore\", or set \"unknown\": \"ignore\")",
        path.display(),
        list.join(", "),
        if unknown.len() > 8 { ", ..." } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb_set() -> ClassSet {
        serde_json::from_str(
            r#"{"encoding": "rgb", "ignore": [[0, 0, 0]], "classes": [
                {"name": "ground", "color": [128, 64, 128]},
                {"name": "plant", "prompt": "green plants", "color": [0, 200, 0]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_built_in_set_is_cityscapes_and_default() {
        let c = ClassSet::cityscapes();
        assert_eq!((c.len(), c.names()[13].as_str(), c.palette()[0]), (19, "car", [128, 64, 128]));
        assert!(c.is_default() && c.validate().is_ok());
        let mut p = c.clone();
        p.classes[0].prompt = Some("paved road".into());
        assert!(!p.is_default());
    }

    #[test]
    fn rgb_labels_decode_to_indices_and_undeclared_colours_are_refused() {
        let s = rgb_set();
        s.validate().unwrap();
        assert_eq!(s.prompt_words(), ["ground", "green plants"]);
        let codec = s.codec();
        let raw = [128, 64, 128, 0, 200, 0, 0, 0, 0];
        assert_eq!(codec.decode(&raw, Path::new("a.png")).unwrap(), [0, 1, 255]);
        let bad = [128, 64, 128, 9, 9, 9, 9, 9, 9];
        let e = codec.decode(&bad, Path::new("b.png")).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("9,9,9 (2 pixels)"), "{e}");
        let counts = codec.count(&bad);
        assert_eq!((counts.pixels[0], counts.pixels[255]), (1, 2));
    }

    #[test]
    fn ids_use_declared_values_and_tolerate_unknown_only_when_asked() {
        let mut s: ClassSet =
            serde_json::from_str(r#"{"classes": [{"name": "a", "color": [1, 2, 3], "id": 7}, {"name": "b", "color": [4, 5, 6]}]}"#)
                .unwrap();
        s.validate().unwrap();
        let raw = [7, 1, 255, 3];
        assert!(s.codec().decode(&raw, Path::new("l.png")).unwrap_err().to_string().contains("3 (1 pixels)"));
        s.unknown = UnknownLabels::Ignore;
        assert_eq!(s.codec().decode(&raw, Path::new("l.png")).unwrap(), [0, 1, 255, 255]);
    }

    #[test]
    fn validation_names_the_problem() {
        let dup = r#"{"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [4, 5, 6]}]}"#;
        let clash = r#"{"classes": [{"name": "a", "color": [1, 2, 3], "id": 1}, {"name": "b", "color": [4, 5, 6]}]}"#;
        let rgb_no_ignore = r#"{"encoding": "rgb", "classes": [{"name": "a", "color": [1, 2, 3]}]}"#;
        for (text, want) in [(dup, "both named"), (clash, "same label value 1"), (rgb_no_ignore, "ignore colours")] {
            let s: ClassSet = serde_json::from_str(text).unwrap();
            let e = s.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert!(serde_json::from_str::<ClassSet>(r#"{"classes": [], "colour": 1}"#).is_err());
    }

    #[test]
    fn differences_are_listed() {
        let a = rgb_set();
        let mut b = a.clone();
        b.classes[1].prompt = None;
        b.encoding = LabelEncoding::Ids;
        let e = a.same_classes(&b).unwrap_err();
        assert!(e.contains("class 1 (plant) has prompt"), "{e}");
        assert!(a.same_classes(&a).is_ok());
        assert!(ClassSet::cityscapes().same_classes(&a).unwrap_err().contains("19 classes vs 2"));
    }
}
