//! Every setting a user gives a training run, declared once.
//!
//! [`SETTINGS`] lists each setting with its name, its type, its documentation, how its
//! default is found and what a resumed run does with it. Everything else is derived
//! from that table: `famix train`'s flags and their help (the CLI builds them from it),
//! the keyword arguments `famix.train` accepts and documents (Python reads it), the
//! defaults both print (the value of the same-named field of
//! [`TrainConfig::reference`]), and the resume rule (a resumed run keeps its saved
//! configuration; only `iters` may extend it). Adding a setting means one entry here
//! plus its use.
//!
//! The values a front end was given are collected in [`Given`], keyed by setting name
//! and checked against the declared type as they arrive, so an error names the setting
//! in the library's words (`batch`); the CLI spells it `--batch`, Python `batch=`.
//! [`Given::new_config`] turns them into a new run's [`TrainConfig`]: the settings that
//! are fields of the configuration go through its own deserialisation (one type check,
//! one source of defaults); the rest (switches such as `no_mix`, the validation set,
//! the class file, precision and numerics) are combined here, with the rules on which
//! go together.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::{TrainConfig, ValSpec};
use crate::data::classes::ClassSet;
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::io::run_folder::{read_config, RunFolder};
use crate::model::{FreezePolicy, HeadConfig, Precision};
use crate::names::Named;
use crate::style::mixing::StyleMode;

/// What a setting's value is.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// A switch: off unless given.
    Switch,
    /// A whole number ≥ 0.
    Count,
    /// A whole number.
    Int,
    /// A real number.
    Real,
    /// Text.
    Text,
    /// A file or folder.
    Path,
    /// One of a list of names.
    Choice(fn() -> Vec<&'static str>),
    /// Named evaluation sets, `NAME=DATASET:ROOT` as text (a map of [`ValSpec`]s by
    /// name as a value); given several times, the maps merge.
    Sets,
}

/// What resuming a run does with a setting given again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnResume {
    /// Refused: the run keeps its saved value.
    Fixed,
    /// Replaces the saved value (`iters`: extends the run).
    Extends,
}

/// Where a setting's default comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// The same-named field of [`TrainConfig::reference`] (for a GTA5 source).
    Reference,
    /// Described in words (it depends on other settings, or is a choice of switches).
    Note(&'static str),
    /// None: required for a new run, or absent unless given.
    Nothing,
}

/// One training setting.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Its name: the configuration's field where `field`, the CLI's flag with hyphens,
    /// Python's keyword.
    pub name: &'static str,
    /// What it does (one sentence, no default: that is derived).
    pub doc: &'static str,
    /// Its value.
    pub ty: Ty,
    /// Whether it is the same-named field of [`TrainConfig`], set through its
    /// deserialisation.
    pub field: bool,
    /// Its default.
    pub default: DefaultValue,
    /// Whether a new run needs it.
    pub required: bool,
    /// What resuming does with it.
    pub on_resume: OnResume,
    /// How help texts name its value (e.g. `FILE`), when not its own name.
    pub value_name: Option<&'static str>,
}

const fn field(name: &'static str, ty: Ty, doc: &'static str) -> Setting {
    Setting { name, doc, ty, field: true, default: DefaultValue::Reference, required: false, on_resume: OnResume::Fixed, value_name: None }
}

const fn other(name: &'static str, ty: Ty, doc: &'static str) -> Setting {
    Setting { field: false, default: DefaultValue::Nothing, ..field(name, ty, doc) }
}

const fn required(s: Setting) -> Setting {
    Setting { required: true, default: DefaultValue::Nothing, ..s }
}

const fn note(s: Setting, text: &'static str) -> Setting {
    Setting { default: DefaultValue::Note(text), ..s }
}

const fn named_value(s: Setting, value_name: &'static str) -> Setting {
    Setting { value_name: Some(value_name), ..s }
}

/// The names a [`Named`] choice takes (a [`Ty::Choice`]).
fn choices<T: Named>() -> Vec<&'static str> {
    T::ALL.iter().map(|v| v.name()).collect()
}

/// Every training setting, in the order help texts list them.
pub const SETTINGS: &[Setting] = &[
    required(field("clip", Ty::Path, "CLIP checkpoint whose image tower initialises the backbone")),
    required(field("dataset", Ty::Choice(choices::<DatasetKind>), "Source dataset")),
    required(field("data_root", Ty::Path, "Source dataset root folder")),
    field("split", Ty::Text, "Source split"),
    field("condition", Ty::Text, "ACDC condition, when training on ACDC"),
    field("styles", Ty::Path, "Style bank from `famix mine-styles` (needed unless `no_styles` or `random_styles`)"),
    Setting { on_resume: OnResume::Extends, ..field("iters", Ty::Count, "Total iterations (a resumed run may extend it)") },
    field("batch", Ty::Count, "Images per iteration"),
    field("crop", Ty::Count, "Random crop size, divisible by 4"),
    field("lr", Ty::Real, "Head learning rate; the backbone's is lr × `backbone_lr_mult`"),
    field("backbone_lr_mult", Ty::Real, "Backbone learning rate as a multiple of `lr`"),
    field("momentum", Ty::Real, "SGD momentum"),
    field("weight_decay", Ty::Real, "SGD weight decay"),
    field("poly_power", Ty::Real, "Poly schedule power: lr·(1 − it/iters)^power, never below `min_lr`"),
    field("min_lr", Ty::Real, "Lower bound of the poly schedule"),
    field("label_smoothing", Ty::Real, "Label smoothing of the cross-entropy"),
    field("output_stride", Ty::Int, "Backbone output stride: 8, 16 or 32"),
    note(
        field(
            "freeze",
            Ty::Choice(choices::<FreezePolicy>),
            "What trains: synthetic (layer4's last block and the head), layer4 (layer4 and the head), none (everything)",
        ),
        "synthetic; layer4 for cityscapes",
    ),
    field("grid", Ty::Count, "Style grid, patches per side"),
    field("beta", Ty::Real, "Beta(a, a) parameter of the mixing weight"),
    other("no_mix", Ty::Switch, "Apply sampled styles without mixing (the reference's mix=False)"),
    other("no_styles", Ty::Switch, "No style transfer at all: plain minimal fine-tuning"),
    other(
        "random_styles",
        Ty::Switch,
        "The control without language: FAMix's local mixing with per-patch statistics drawn at random around the batch's own (no style bank)",
    ),
    other("no_augment", Ty::Switch, "Disable colour jitter and flips"),
    note(other("num_classes", Ty::Int, "Number of classes, 19 = the Cityscapes train ids"), "19"),
    named_value(
        note(
            other(
                "classes",
                Ty::Path,
                "Class file (JSON: each class's name, prompt words, colour and label value; see the guide's \"Your own classes\"); the checkpoints record it",
            ),
            "Cityscapes' 19 classes",
        ),
        "FILE",
    ),
    other("val_dataset", Ty::Choice(choices::<DatasetKind>), "Validation dataset (e.g. cityscapes): enables best checkpoints"),
    other("val_root", Ty::Path, "Validation dataset root folder"),
    note(other("val_split", Ty::Text, "Validation split"), "val"),
    other("val_condition", Ty::Text, "Validation ACDC condition"),
    other("val_limit", Ty::Count, "Validate on the first N images only"),
    named_value(
        field(
            "monitor",
            Ty::Sets,
            "Further sets evaluated at every checkpoint, only to watch them: logged as monitor_miou, plotted by `famix report`, never used to choose best (NAME=DATASET:ROOT, its val split; repeatable)",
        ),
        "NAME=DATASET:ROOT",
    ),
    field("val_interval", Ty::Count, "Validate and checkpoint every N iterations"),
    field("log_interval", Ty::Count, "Log every N iterations"),
    field("seed", Ty::Count, "Seed of every random choice: data order, augmentation, styles, dropout, head init"),
    note(other("amp", Ty::Choice(choices::<Precision>), "Mixed precision: bf16 autocast; fp32 is the reference's"), "fp32"),
    other(
        "deterministic",
        Ty::Switch,
        "CUDA: deterministic kernels (PyTorch's deterministic-algorithms mode, cuDNN deterministic, cuDNN benchmark off), so a run repeats bit for bit; slower. The CPU is deterministic without it",
    ),
    other(
        "no_tf32",
        Ty::Switch,
        "CUDA: fp32 convolutions and matmuls in IEEE fp32 instead of TF32 (libtorch's default for convolutions, about 1e-3 relative)",
    ),
];

/// The setting called `name`, if any.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl Setting {
    /// The default as help texts print it, if it has one.
    pub fn default_text(&self) -> Option<String> {
        match self.default {
            DefaultValue::Note(t) => Some(t.to_string()),
            DefaultValue::Nothing => None,
            DefaultValue::Reference => match reference_fields().remove(self.name)? {
                Value::Null => None,
                Value::String(s) => Some(s),
                Value::Object(o) if o.is_empty() => None,
                v => Some(v.to_string()),
            },
        }
    }

    /// The names a [`Ty::Choice`] setting takes.
    pub fn choices(&self) -> Option<Vec<&'static str>> {
        match self.ty {
            Ty::Choice(names) => Some(names()),
            _ => None,
        }
    }

    /// The value written as text (a flag's argument), checked.
    pub fn parse(&self, text: &str) -> Result<Value> {
        let number = |v: std::result::Result<Value, String>| v.map_err(|e| Error::invalid_setting(self.name, format!("'{text}': {e}")));
        match self.ty {
            Ty::Switch => number(text.parse::<bool>().map(Value::Bool).map_err(|_| "expected true or false".into())),
            Ty::Count => number(text.parse::<u64>().map(Value::from).map_err(|_| "expected a whole number ≥ 0".into())),
            Ty::Int => number(text.parse::<i64>().map(Value::from).map_err(|_| "expected a whole number".into())),
            // JSON has no NaN or infinity (serde_json would turn them into null: "not given").
            Ty::Real => {
                number(text.parse::<f64>().ok().filter(|v| v.is_finite()).map(Value::from).ok_or_else(|| "expected a finite number".into()))
            }
            Ty::Text | Ty::Path | Ty::Choice(_) => self.check(Value::String(text.to_string())),
            Ty::Sets => parse_set(text).map_err(|e| Error::invalid_setting(self.name, e)),
        }
    }

    /// A value as given (e.g. by Python), checked against the type; `None` for a
    /// switch that is off.
    pub fn check(&self, v: Value) -> Result<Value> {
        let ok = match (&self.ty, &v) {
            (Ty::Switch, Value::Bool(_)) => true,
            (Ty::Count, Value::Number(n)) => n.is_u64(),
            (Ty::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Ty::Real, Value::Number(_)) => true,
            (Ty::Text | Ty::Path, Value::String(_)) => true,
            (Ty::Choice(names), Value::String(s)) => {
                if !names().contains(&s.as_str()) {
                    return Err(Error::invalid_setting(self.name, format!("'{s}' is not one of {}", names().join(", "))));
                }
                true
            }
            (Ty::Sets, Value::Object(o)) => {
                for (name, spec) in o {
                    serde_json::from_value::<ValSpec>(spec.clone())
                        .map_err(|e| Error::invalid_setting(self.name, format!("{name}: {e}")))?;
                }
                true
            }
            _ => false,
        };
        if ok {
            Ok(v)
        } else {
            Err(Error::invalid_setting(self.name, format!("expected {}, got {v}", self.ty.expected())))
        }
    }
}

impl Ty {
    /// The type's name: switch, count, int, real, text, path, choice or sets.
    pub fn name(&self) -> &'static str {
        match self {
            Ty::Switch => "switch",
            Ty::Count => "count",
            Ty::Int => "int",
            Ty::Real => "real",
            Ty::Text => "text",
            Ty::Path => "path",
            Ty::Choice(_) => "choice",
            Ty::Sets => "sets",
        }
    }

    fn expected(&self) -> &'static str {
        match self {
            Ty::Switch => "true or false",
            Ty::Count => "a whole number ≥ 0",
            Ty::Int => "a whole number",
            Ty::Real => "a number",
            Ty::Text => "text",
            Ty::Path => "a path",
            Ty::Choice(_) => "a name",
            Ty::Sets => "a map of name → {dataset, data_root[, split, condition, limit]}",
        }
    }
}

/// `NAME=DATASET:ROOT` (the `val` split of a dataset, under a name).
fn parse_set(s: &str) -> std::result::Result<Value, String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=DATASET:ROOT, e.g. dusk=folder:data/dusk")?;
    let (kind, root) = rest.split_once(':').ok_or("expected NAME=DATASET:ROOT (DATASET and ROOT joined by ':')")?;
    let dataset = DatasetKind::parse(kind).ok_or_else(|| format!("unknown dataset '{kind}' (one of {})", DatasetKind::names()))?;
    let spec = serde_json::to_value(ValSpec::val_split(dataset, root.into())).map_err(|e| e.to_string())?;
    Ok(Value::Object(Map::from_iter([(name.to_string(), spec)])))
}

/// The reference configuration's fields (for defaults).
fn reference_fields() -> Map<String, Value> {
    let c = TrainConfig::reference("clip".into(), String::new(), DatasetKind::Gta5, "data".into(), None);
    match serde_json::to_value(c) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

/// The settings a front end was given, by name, each checked against its type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    values: BTreeMap<&'static str, Value>,
}

impl Given {
    /// Nothing given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from a map of name → value (e.g. Python's keyword arguments); nulls and
    /// switches that are off count as not given.
    pub fn from_map(map: Map<String, Value>) -> Result<Self> {
        let mut g = Given::new();
        for (k, v) in map {
            g.set(&k, v)?;
        }
        Ok(g)
    }

    fn declared(name: &str) -> Result<&'static Setting> {
        setting(name).ok_or_else(|| {
            let names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
            Error::invalid_setting(name, format!("unknown setting (a training run takes {})", names.join(", ")))
        })
    }

    /// Gives `name` the value `v` (null or a switch off: not given; a second set of
    /// evaluation sets merges with the first).
    pub fn set(&mut self, name: &str, v: Value) -> Result<()> {
        let s = Self::declared(name)?;
        if v.is_null() || v == Value::Bool(false) && matches!(s.ty, Ty::Switch) {
            return Ok(());
        }
        let v = s.check(v)?;
        match (self.values.get_mut(s.name), v) {
            (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
            (_, v) => {
                self.values.insert(s.name, v);
            }
        }
        Ok(())
    }

    /// Gives `name` the value written as `text`.
    #[cfg(test)]
    fn set_text(&mut self, name: &str, text: &str) -> Result<()> {
        let v = Self::declared(name)?.parse(text)?;
        self.set(name, v)
    }

    /// The value given for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    fn on(&self, name: &str) -> bool {
        self.get(name) == Some(&Value::Bool(true))
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|v| v.as_str()).map(str::to_string)
    }

    /// The names given, in [`SETTINGS`] order.
    pub fn names(&self) -> Vec<&'static str> {
        SETTINGS.iter().map(|s| s.name).filter(|n| self.values.contains_key(n)).collect()
    }

    /// The settings given that a resumed run refuses (it keeps its saved ones).
    pub fn fixed_on_resume(&self) -> Vec<&'static str> {
        SETTINGS.iter().filter(|s| s.on_resume == OnResume::Fixed && self.values.contains_key(s.name)).map(|s| s.name).collect()
    }

    /// Refuses the settings given that a resumed run keeps.
    fn check_resumable(&self) -> Result<()> {
        match self.fixed_on_resume().first() {
            Some(name) => Err(Error::invalid_setting(
                *name,
                "cannot change when resuming: a run keeps its settings in its config.json (only `iters` may extend it)",
            )),
            None => Ok(()),
        }
    }

    /// The configuration of the run in `run` resumed with these settings: refused
    /// before the run is read when a setting it keeps was given, so the message is
    /// about what was given.
    pub fn resume(&self, run: &Path) -> Result<TrainConfig> {
        self.check_resumable()?;
        self.resumed(read_config(&RunFolder::new(run))?)
    }

    /// A resumed run's configuration: the saved one with the settings that may change
    /// on resume applied; refused when any other setting was given.
    pub fn resumed(&self, mut saved: TrainConfig) -> Result<TrainConfig> {
        self.check_resumable()?;
        let extends: Vec<&Setting> = SETTINGS.iter().filter(|s| s.on_resume == OnResume::Extends).collect();
        self.set_fields(&mut saved, &extends)?;
        Ok(saved)
    }

    /// A new run's configuration: the reference's ([`TrainConfig::reference`]) for
    /// the source dataset, with every setting given on top.
    pub fn new_config(&self) -> Result<TrainConfig> {
        let need = ["clip", "dataset", "data_root"];
        if let Some(missing) = need.iter().find(|n| self.get(n).is_none()) {
            return Err(Error::invalid_setting(*missing, "`clip`, `dataset` and `data_root` are needed for a new run"));
        }
        let clip = PathBuf::from(self.text("clip").unwrap_or_default());
        let sha = crate::io::sha256_file(&clip)?;
        let dataset =
            DatasetKind::parse(&self.text("dataset").unwrap_or_default()).ok_or_else(|| Error::invalid_setting("dataset", "unknown"))?;
        let mut c = TrainConfig::reference(clip, sha, dataset, PathBuf::new(), None);
        let fields: Vec<&Setting> = SETTINGS.iter().filter(|s| s.field).collect();
        self.set_fields(&mut c, &fields)?;
        c.style_mode = self.style_mode(&c)?;
        c.augment = !self.on("no_augment");
        c.precision = self.text("amp").and_then(|a| Precision::parse(&a)).unwrap_or(Precision::Fp32);
        c.numerics = crate::device::Numerics { deterministic: self.on("deterministic"), tf32: !self.on("no_tf32") };
        c.val = self.validation()?;
        self.set_classes(&mut c)?;
        Ok(c)
    }

    /// Copies the given values of `settings` (fields of the configuration) through the
    /// configuration's own deserialisation, one at a time so a bad value is named.
    fn set_fields(&self, c: &mut TrainConfig, settings: &[&Setting]) -> Result<()> {
        let mut v = serde_json::to_value(&*c).map_err(|e| Error::invalid_setting("settings", e.to_string()))?;
        for s in settings {
            let Some(value) = self.get(s.name) else { continue };
            if let Some(o) = v.as_object_mut() {
                o.insert(s.name.to_string(), value.clone());
            }
            if let Err(e) = serde_json::from_value::<TrainConfig>(v.clone()) {
                return Err(Error::invalid_setting(s.name, format!("{e} (given {value})")));
            }
        }
        *c = serde_json::from_value(v).map_err(|e| Error::invalid_setting("settings", e.to_string()))?;
        Ok(())
    }

    /// The style mode the switches choose, with the rules on which go together.
    fn style_mode(&self, c: &TrainConfig) -> Result<StyleMode> {
        let (no_styles, no_mix, random) = (self.on("no_styles"), self.on("no_mix"), self.on("random_styles"));
        if no_styles && no_mix {
            return Err(Error::invalid_setting("no_mix", "and `no_styles` exclude each other"));
        }
        if random && (no_styles || no_mix || c.styles.is_some()) {
            return Err(Error::invalid_setting(
                "random_styles",
                "draws its statistics without a style bank: give none of `styles`, `no_mix`, `no_styles` with it",
            ));
        }
        let mode = match (no_styles, no_mix, random) {
            (true, _, _) => StyleMode::NoStyles,
            (_, true, _) => StyleMode::NoMix,
            (_, _, true) => StyleMode::RandomMix,
            _ => StyleMode::Mix,
        };
        if mode.needs_bank() && c.styles.is_none() {
            return Err(Error::invalid_setting(
                "styles",
                "a style bank is required (mine one with `famix mine-styles`), or set `no_styles` or `random_styles`",
            ));
        }
        Ok(mode)
    }

    /// The validation set (`val_dataset` and `val_root` go together).
    fn validation(&self) -> Result<Option<ValSpec>> {
        match (self.text("val_dataset"), self.text("val_root")) {
            (Some(d), Some(r)) => {
                let dataset = DatasetKind::parse(&d).ok_or_else(|| Error::invalid_setting("val_dataset", "unknown"))?;
                let mut v = ValSpec::val_split(dataset, r.into());
                v.split = self.text("val_split").unwrap_or(v.split);
                v.condition = self.text("val_condition");
                v.limit = self.get("val_limit").and_then(Value::as_u64).map(|l| l as usize);
                Ok(Some(v))
            }
            (None, None) => {
                let stray = ["val_split", "val_condition", "val_limit"].into_iter().find(|n| self.get(n).is_some());
                match stray {
                    Some(n) => Err(Error::invalid_setting(n, "describes the validation set: give `val_dataset` and `val_root` too")),
                    None => Ok(None),
                }
            }
            (Some(_), None) => Err(Error::invalid_setting("val_root", "is needed with `val_dataset`")),
            (None, Some(_)) => Err(Error::invalid_setting("val_dataset", "is needed with `val_root`")),
        }
    }

    /// The classes: a class file, or a number of Cityscapes-style classes.
    fn set_classes(&self, c: &mut TrainConfig) -> Result<()> {
        if let Some(n) = self.get("num_classes").and_then(Value::as_i64) {
            if self.get("classes").is_some() {
                return Err(Error::invalid_setting("num_classes", "a class file (`classes`) sets the number of classes: give one of them"));
            }
            c.head = HeadConfig::reference(n);
        }
        if let Some(p) = self.text("classes") {
            c.set_classes(ClassSet::from_file(std::path::Path::new(&p))?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration field a user chooses is a declared setting of its name with
    /// the reference's default; the others are derived or recorded, listed here. A new
    /// field without its declaration fails.
    #[test]
    fn every_chosen_field_is_declared_once() {
        const DERIVED: [&str; 8] = ["clip_sha256", "style_mode", "augment", "head", "val", "amp_bf16", "run_id", "numerics"];
        let fields = reference_fields();
        for (k, v) in &fields {
            if DERIVED.contains(&k.as_str()) || k == "classes" {
                continue;
            }
            let s = setting(k).unwrap_or_else(|| panic!("field {k} has no declared setting"));
            assert!(s.field, "{k}");
            if s.default == DefaultValue::Reference && !v.is_null() && v != &Value::Object(Map::new()) {
                let printed = s.default_text().unwrap();
                let want = match v {
                    Value::String(t) => t.clone(),
                    v => v.to_string(),
                };
                assert_eq!(printed, want, "{k}");
            }
        }
        for s in SETTINGS.iter().filter(|s| s.field) {
            assert!(fields.contains_key(s.name), "{} is declared a field but TrainConfig has none", s.name);
        }
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len(), "a setting is declared twice");
    }

    /// A value of the right type for each setting, as text.
    fn sample(s: &Setting) -> &'static str {
        match s.ty {
            Ty::Switch => "true",
            Ty::Count | Ty::Int => "16",
            Ty::Real => "0.5",
            Ty::Text | Ty::Path => "x",
            Ty::Choice(names) => names()[0],
            Ty::Sets => "dusk=folder:data/dusk",
        }
    }

    /// Resuming refuses exactly the settings declared fixed, and applies the others.
    #[test]
    fn resume_refuses_exactly_the_fixed_settings() {
        let saved = TrainConfig::reference("c".into(), String::new(), DatasetKind::Gta5, "d".into(), None);
        for s in SETTINGS {
            let mut g = Given::new();
            g.set_text(s.name, sample(s)).unwrap();
            let r = g.resumed(saved.clone());
            match s.on_resume {
                OnResume::Fixed => {
                    let e = r.err().unwrap_or_else(|| panic!("{} was accepted on resume", s.name));
                    assert!(matches!(&e, Error::InvalidSetting { name, .. } if name == s.name), "{e}");
                }
                OnResume::Extends => assert_ne!(r.unwrap(), saved, "{} changed nothing", s.name),
            }
        }
    }

    /// Values of the wrong type are refused naming the setting; unknown names are
    /// refused with the list; switches off and nulls are not given.
    #[test]
    fn given_values_are_checked_as_they_arrive() {
        let mut g = Given::new();
        for (name, v) in
            [("batch", Value::from(-1)), ("lr", Value::from("fast")), ("freeze", Value::from("most")), ("no_mix", Value::from(1))]
        {
            let e = g.set(name, v).err().unwrap();
            assert!(matches!(&e, Error::InvalidSetting { name: n, .. } if n == name), "{e}");
        }
        let e = g.set("learning_rate", Value::from(0.1)).err().unwrap();
        assert!(e.to_string().contains("unknown setting") && e.to_string().contains("backbone_lr_mult"), "{e}");
        g.set("no_mix", Value::Bool(false)).unwrap();
        g.set("condition", Value::Null).unwrap();
        assert!(g.names().is_empty());
        let e = g.set_text("lr", "NaN").err().unwrap();
        assert!(e.to_string().contains("finite"), "{e}");
        let e = g.set_text("iters", "-1").err().unwrap();
        assert!(e.to_string().starts_with("iters: '-1'"), "{e}");
        g.set_text("monitor", "a=folder:x").unwrap();
        g.set_text("monitor", "b=folder:y").unwrap();
        assert_eq!(g.get("monitor").and_then(Value::as_object).map(|o| o.len()), Some(2));
    }
}
