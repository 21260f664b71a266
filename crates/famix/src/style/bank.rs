//! The style bank: per class, the learnt (μ, σ) pairs of mined layer1 styles.
//!
//! Stored as safetensors (`<class>/mu`, `<class>/sigma`, each [n, C]; `<class>` is the
//! class name, "255" for the ignore class) plus a JSON summary beside it (counts,
//! prompts, CLIP checkpoint hash, seed, dataset, progress). Both are written
//! atomically. The reference's `saved_params.pkl` can be imported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{fail, Context, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::classes::ClassSet;
use crate::data::labels::IGNORE;
use crate::io::archive::{load_file, save_safetensors};

/// The safetensors metadata key of a bank's summary.
const SUMMARY_KEY: &str = "famix-style-bank";

/// The `format` field of style banks.
pub const FORMAT: &str = "famix-style-bank";

/// One mined style with where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StyleOrigin {
    /// Mining batch it came from.
    pub batch: u64,
    /// Patch index in the batch (grid-cell-major, then image).
    pub patch: usize,
    /// The prompt it was mined for.
    pub prompt: String,
    /// PIN loss at the last iteration.
    pub final_loss: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
/// A bank's JSON summary (also its safetensors metadata).
pub struct BankSummary {
    /// Always [`FORMAT`].
    pub format: String,
    /// The famix version that wrote it.
    pub famix_version: String,
    /// Channels of each μ and σ.
    pub channels: usize,
    /// Styles per class name.
    pub counts: BTreeMap<String, usize>,
    /// Mining settings and provenance (dataset, CLIP hash, seed, ...), for resume checks.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Batches mined so far / in total (resume continues from here).
    #[serde(default)]
    pub batches_done: u64,
    #[serde(default)]
    /// Batches the run will mine in all.
    pub batches_total: u64,
    /// Per class, where each entry came from (same order as the tensors).
    #[serde(default)]
    pub origins: BTreeMap<String, Vec<StyleOrigin>>,
    /// Mean loss of each mined batch over its iterations' last value.
    #[serde(default)]
    pub batch_losses: Vec<f64>,
    /// Each mined batch's PIN loss curve (batch order, as `batch_losses`), sampled at
    /// [`PIN_CURVE_POINTS`] steps evenly spread from the first to the last: the evidence
    /// that the PIN steps were enough ([`BankSummary::pin_curve`]). Stored as f32, the
    /// precision PIN computes them in, so they read back exactly (a merged bank equals
    /// the unsharded one byte for byte).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin_curves: Vec<Vec<(usize, f32)>>,
    /// The class set the styles were mined for, when it is not Cityscapes' (banks
    /// without it hold Cityscapes' 19 classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<ClassSet>,
}

/// Points kept of each batch's PIN loss curve.
pub const PIN_CURVE_POINTS: usize = 21;

/// `losses[i]` is the loss after step i + 1: the points kept, as (step, loss), the
/// first and the last always among them.
pub(crate) fn sample_curve(losses: &[f64]) -> Vec<(usize, f32)> {
    let n = losses.len();
    let k = PIN_CURVE_POINTS.min(n);
    let mut steps: Vec<usize> = (0..k).map(|j| if k == 1 { n - 1 } else { j * (n - 1) / (k - 1) }).collect();
    steps.dedup();
    steps.into_iter().map(|i| (i + 1, losses[i] as f32)).collect()
}

impl BankSummary {
    /// The mean PIN loss curve over the mined batches, as (step, loss); empty for banks
    /// written before the curves were recorded.
    pub fn pin_curve(&self) -> Vec<(usize, f64)> {
        let Some(first) = self.pin_curves.first() else { return Vec::new() };
        first
            .iter()
            .enumerate()
            .map(|(j, &(step, _))| {
                let v: Vec<f64> = self.pin_curves.iter().filter_map(|c| c.get(j).map(|p| p.1 as f64)).collect();
                (step, v.iter().sum::<f64>() / v.len().max(1) as f64)
            })
            .collect()
    }
}

/// One class's styles: (μ rows, σ rows).
pub type ClassStyles = (Vec<Vec<f32>>, Vec<Vec<f32>>);

#[derive(Debug, Clone)]
/// Per-class lists of mined (μ, σ).
pub struct StyleBank {
    /// Channels of each μ and σ (layer1's width).
    pub channels: usize,
    /// The classes (index = train id); styles are stored under their names.
    pub classes: ClassSet,
    /// class id (0..K, 255 = ignore) → (μ rows, σ rows), each row `channels` long.
    pub entries: BTreeMap<u8, ClassStyles>,
    /// Counts, progress and provenance.
    pub summary: BankSummary,
}

/// The JSON summary written beside a bank.
pub fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("json")
}

impl StyleBank {
    /// An empty bank.
    pub fn new(channels: usize, classes: ClassSet) -> Self {
        StyleBank {
            channels,
            classes,
            entries: BTreeMap::new(),
            summary: BankSummary { format: FORMAT.into(), famix_version: env!("CARGO_PKG_VERSION").into(), channels, ..Default::default() },
        }
    }

    /// The key of a class in files: its name, or "255" for ignore.
    pub fn key(&self, class: u8) -> String {
        if class == IGNORE {
            "255".into()
        } else {
            self.classes.classes.get(class as usize).map(|c| c.name.clone()).unwrap_or_else(|| format!("class{class}"))
        }
    }

    fn class_of(&self, key: &str) -> Option<u8> {
        if key == "255" {
            return Some(IGNORE);
        }
        self.classes.classes.iter().position(|c| c.name == key).map(|i| i as u8)
    }

    /// Appends a style to a class.
    pub fn push(&mut self, class: u8, mu: Vec<f32>, sigma: Vec<f32>, origin: Option<StyleOrigin>) {
        let e = self.entries.entry(class).or_default();
        e.0.push(mu);
        e.1.push(sigma);
        if let Some(o) = origin {
            let k = self.key(class);
            self.summary.origins.entry(k).or_default().push(o);
        }
    }

    /// Checks a class's styles: finite means and deviations. (A deviation may be
    /// negative: PIN optimises σ freely and ReLU(norm·σ + μ) is defined for either
    /// sign; the reference keeps such styles, and so does famix.)
    pub(crate) fn check_values(&self, class: u8) -> Result<()> {
        let Some((mu, sigma)) = self.entries.get(&class) else { return Ok(()) };
        for (i, (m, s)) in mu.iter().zip(sigma).enumerate() {
            if let Some(v) = m.iter().chain(s).find(|v| !v.is_finite()) {
                fail!(
                    InvalidInput,
                    "style bank",
                    "class {} style {i} holds a non-finite value ({v}); styles must be finite",
                    self.key(class)
                );
            }
        }
        Ok(())
    }

    /// Styles of a class.
    pub fn count(&self, class: u8) -> usize {
        self.entries.get(&class).map(|e| e.0.len()).unwrap_or(0)
    }

    /// Styles in all.
    pub fn total(&self) -> usize {
        self.entries.values().map(|e| e.0.len()).sum()
    }

    /// Every class of a bank read from `path` has as many means as deviations, all finite.
    fn check_entries(&self, path: &std::path::Path) -> Result<()> {
        for (c, e) in &self.entries {
            if e.0.len() != e.1.len() {
                fail!(
                    InvalidInput,
                    path,
                    "{}: class {} has {} means but {} deviations",
                    path.display(),
                    self.key(*c),
                    e.0.len(),
                    e.1.len()
                );
            }
            self.check_values(*c).with_context(|| format!("{}", path.display()))?;
        }
        Ok(())
    }

    fn refresh_counts(&mut self) {
        self.summary.channels = self.channels;
        self.summary.classes = self.classes.unless_cityscapes().cloned();
        self.summary.counts = self.entries.iter().map(|(c, e)| (self.key(*c), e.0.len())).collect();
    }

    /// Writes the bank (tensors and summary) atomically.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.refresh_counts();
        let mut tensors = Vec::new();
        for (c, (mu, sigma)) in &self.entries {
            let key = self.key(*c);
            let n = mu.len() as i64;
            let flat = |rows: &Vec<Vec<f32>>| Tensor::from_slice(&rows.concat()).view([n, self.channels as i64]);
            tensors.push((format!("{key}/mu"), flat(mu)));
            tensors.push((format!("{key}/sigma"), flat(sigma)));
        }
        if self.summary.batch_losses.iter().any(|l| !l.is_finite()) {
            return Err(Error::NonFinite { what: format!("the mining losses to save into {}", path.display()), count: 1 });
        }
        // The summary (with the mining progress a resume continues from) lives in the
        // tensors' file, so one rename commits both; the .json beside it is a copy.
        let md = [(SUMMARY_KEY.to_string(), serde_json::to_string(&self.summary)?)].into_iter().collect();
        save_safetensors(path, &tensors, Some(md))?;
        crate::io::atomic_write_json(&sidecar(path), &self.summary)
    }

    /// Reads a bank written by `save`.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            fail!(InvalidInput, path, "style bank {} not found", path.display());
        }
        let f = load_file(path)?;
        if !f.metadata.contains_key(SUMMARY_KEY) && f.metadata.contains_key(crate::model::checkpoint::META_KEY) {
            fail!(InvalidInput, path, "{} is a segmenter checkpoint, not a style bank", path.display());
        }
        let summary: BankSummary = match f.metadata.get(SUMMARY_KEY) {
            Some(s) => serde_json::from_str(s).map_err(|e| Error::from(e).unreadable(path, "unreadable summary"))?,
            // Banks of older famix versions kept the summary only beside the tensors.
            None => match std::fs::read_to_string(sidecar(path)) {
                Ok(s) => serde_json::from_str(&s).map_err(|e| Error::from(e).unreadable(sidecar(path), "unreadable summary"))?,
                Err(_) => BankSummary::default(),
            },
        };
        let classes = summary.classes.clone().unwrap_or_else(ClassSet::cityscapes);
        classes.validate().map_err(|e| Error::invalid_input(path, format!("{}: class set: {e}", path.display())))?;
        let mut bank = StyleBank::new(0, classes);
        bank.summary = summary;
        for (name, t) in &f.tensors {
            let Some((key, which)) = name.rsplit_once('/') else {
                fail!(InvalidInput, path, "{}: unexpected tensor {name:?} (expected <class>/mu and <class>/sigma)", path.display());
            };
            let class =
                bank.class_of(key).ok_or_else(|| Error::invalid_input(path, format!("{}: unknown class {key:?}", path.display())))?;
            let (n, c) = t.size2().with_context(|| format!("{}: {name} is not [n, C]", path.display()))?;
            if bank.channels == 0 {
                bank.channels = c as usize;
            } else if bank.channels != c as usize {
                fail!(InvalidInput, path, "{}: {name} has {c} channels, others {}", path.display(), bank.channels);
            }
            let rows: Vec<Vec<f32>> = (0..n).map(|i| Vec::<f32>::try_from(t.get(i).to_kind(Kind::Float)).unwrap()).collect();
            let e = bank.entries.entry(class).or_default();
            match which {
                "mu" => e.0 = rows,
                "sigma" => e.1 = rows,
                _ => fail!(InvalidInput, path, "{}: unexpected tensor {name:?}", path.display()),
            }
        }
        bank.check_entries(path)?;
        bank.refresh_counts();
        Ok(bank)
    }

    /// Imports the reference's `saved_params.pkl` (dict `'<class>_mu'` / `'<class>_std'` →
    /// lists of (C,1,1) tensors).
    pub fn import_reference(path: &Path) -> Result<Self> {
        let bytes = crate::io::archive::read_bytes(path)?;
        let top = crate::io::pickle::load_plain(&bytes).map_err(|e| e.unreadable(path, "not a readable pickle"))?;
        let items =
            top.dict_items().ok_or_else(|| Error::invalid_input(path, format!("{}: expected a dict of style lists", path.display())))?;
        let mut bank = StyleBank::new(0, ClassSet::cityscapes());
        for (k, v) in &items {
            let (key, which) = if let Some(c) = k.strip_suffix("_mu") {
                (c, 0)
            } else if let Some(c) = k.strip_suffix("_std") {
                (c, 1)
            } else {
                fail!(InvalidInput, path, "{}: unexpected key {k:?}", path.display());
            };
            let class =
                bank.class_of(key).ok_or_else(|| Error::invalid_input(path, format!("{}: unknown class {key:?}", path.display())))?;
            let list = v.list_items().ok_or_else(|| Error::invalid_input(path, format!("{}: {k} is not a list", path.display())))?;
            let mut rows = Vec::new();
            for t in list {
                let crate::io::pickle::Value::Tensor(r) = &t else {
                    fail!(InvalidInput, path, "{}: {k} holds a {}", path.display(), t.type_name());
                };
                let row = crate::io::archive::tensor_from_ref(r)
                    .and_then(|t| Ok(Vec::<f32>::try_from(t.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?))
                    .map_err(|e| e.unreadable(path, format!("{k}: unreadable tensor")))?;
                if bank.channels == 0 {
                    bank.channels = row.len();
                } else if bank.channels != row.len() {
                    fail!(InvalidInput, path, "{}: {k} has a {}-channel style, others {}", path.display(), row.len(), bank.channels);
                }
                rows.push(row);
            }
            let e = bank.entries.entry(class).or_default();
            if which == 0 {
                e.0 = rows;
            } else {
                e.1 = rows;
            }
        }
        bank.entries.retain(|_, e| !e.0.is_empty() || !e.1.is_empty());
        bank.check_entries(path)?;
        bank.summary.config = serde_json::json!({"imported_from": path.display().to_string()});
        bank.refresh_counts();
        Ok(bank)
    }

    /// Device tensors for vectorised sampling: μ and σ of all entries stacked
    /// (N, C), and per class (0..K, then ignore at K) the offset/count of its rows.
    /// A class with no entries uses the ignore class's rows (docs/src/design.md §4).
    pub fn device_tables(&self, num_classes: usize, device: Device) -> Result<BankTables> {
        let ignore = self.count(IGNORE);
        if self.total() == 0 {
            fail!(InvalidInput, "style bank", "the style bank is empty: mine styles first (famix mine-styles)");
        }
        let mut mus = Vec::new();
        let mut sigmas = Vec::new();
        let mut spans = Vec::new(); // (offset, count) per class slot
        let mut ignore_span = (0usize, 0usize);
        for slot in 0..=num_classes {
            let class = if slot == num_classes { IGNORE } else { slot as u8 };
            let off = mus.len() / self.channels.max(1);
            if let Some((m, s)) = self.entries.get(&class) {
                for (a, b) in m.iter().zip(s) {
                    mus.extend_from_slice(a);
                    sigmas.extend_from_slice(b);
                }
            }
            let n = self.count(class);
            spans.push((off, n));
            if class == IGNORE {
                ignore_span = (off, n);
            }
        }
        // An empty class uses the ignore class's styles (docs/src/design.md §4); where that is empty
        // too (the reference would fail), it draws from the whole bank.
        let n = (mus.len() / self.channels) as i64;
        let mut fallback = 0;
        for (slot, span) in spans.iter_mut().enumerate() {
            if span.1 == 0 {
                if ignore == 0 {
                    // Counted: the classes without styles, not the ignore slot itself.
                    fallback += usize::from(slot < num_classes);
                    *span = (0, n as usize);
                } else {
                    *span = ignore_span;
                }
            }
        }
        let c = self.channels as i64;
        Ok(BankTables {
            mu: Tensor::from_slice(&mus).view([n, c]).to_device(device),
            sigma: Tensor::from_slice(&sigmas).view([n, c]).to_device(device),
            spans,
            classes_without_styles: fallback,
        })
    }
}

/// The bank as device tables for mixing.
pub struct BankTables {
    /// (styles, C) means.
    pub mu: Tensor,
    /// (styles, C) deviations.
    pub sigma: Tensor,
    /// Per class slot (train ids 0..K, then the ignore class), (first row, rows).
    pub spans: Vec<(usize, usize)>,
    /// Classes with neither own styles nor ignore-class styles (they use the whole bank).
    pub classes_without_styles: usize,
}

impl BankTables {
    /// Row to use for a patch of `class` given a uniform draw `u` in [0, 1).
    pub fn pick(&self, class: u8, u: f64) -> Option<usize> {
        let slot = if class == IGNORE || class as usize >= self.spans.len() - 1 { self.spans.len() - 1 } else { class as usize };
        let (off, n) = self.spans[slot];
        (n > 0).then(|| off + ((u * n as f64) as usize).min(n - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_curves_keep_first_and_last_steps_and_average_over_batches() {
        let losses: Vec<f64> = (0..100).map(|i| 1.0 / (i + 1) as f64).collect();
        let c = sample_curve(&losses);
        assert_eq!(c.len(), PIN_CURVE_POINTS);
        assert_eq!(c.first(), Some(&(1, 1.0)));
        assert_eq!(c.last(), Some(&(100, 0.01f32)));
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0), "steps increase: {c:?}");
        // Fewer steps than points: every step once.
        assert_eq!(sample_curve(&[0.5, 0.25, 0.125]), vec![(1, 0.5), (2, 0.25), (3, 0.125)]);
        // f32 values survive a JSON round trip exactly.
        let c = sample_curve(&[1.0355870723724365, 0.1 + 0.2]);
        assert_eq!(serde_json::from_str::<Vec<(usize, f32)>>(&serde_json::to_string(&c).unwrap()).unwrap(), c);
        let mut s = StyleBank::new(4, ClassSet::cityscapes()).summary;
        s.pin_curves = vec![vec![(1, 1.0), (3, 0.5)], vec![(1, 0.5), (3, 0.25)]];
        // Exact in binary: (1 + 0.5) / 2 and (0.5 + 0.25) / 2.
        assert_eq!(s.pin_curve(), vec![(1, 0.75), (3, 0.375)]);
    }
}
