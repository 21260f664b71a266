//! The FAMix prompt engine: class names, CLIP's 80 ImageNet templates, the 20
//! "random styles" and the ignore-class prompt (built in: the reference's lists), and
//! the class embedding = L2-normalised mean over templates of the CLIP text embeddings.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{fail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::clip::tokenizer::Tokenizer;
use crate::clip::Clip;
use crate::rng::Rng;

const DEFAULT_PROMPTS: &str = include_str!("../../assets/prompts.json");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
/// Classes, templates and style words of the prompts.
pub struct PromptSet {
    /// One name per train id.
    pub class_names: Vec<String>,
    /// The prompt of the ignore class ("photo").
    pub ignore_class_prompt: String,
    /// CLIP's prompt templates with a `{}` slot.
    pub templates: Vec<String>,
    /// Style words drawn for each prompt.
    pub random_styles: Vec<String>,
}

impl Default for PromptSet {
    fn default() -> Self {
        serde_json::from_str(DEFAULT_PROMPTS).expect("built-in prompts.json is valid")
    }
}

#[derive(Deserialize)]
struct PartialPrompts {
    class_names: Option<Vec<String>>,
    ignore_class_prompt: Option<String>,
    templates: Option<Vec<String>>,
    random_styles: Option<Vec<String>>,
}

impl PromptSet {
    /// A JSON file with any of the keys of the built-in set; missing keys keep the
    /// built-in values. A plain JSON list is taken as the random styles.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut set = PromptSet::default();
        if let Ok(list) = serde_json::from_str::<Vec<String>>(&text) {
            set.random_styles = list;
        } else {
            let p: PartialPrompts = serde_json::from_str(&text).with_context(|| format!("{}: not a prompt JSON file", path.display()))?;
            if let Some(v) = p.class_names {
                set.class_names = v;
            }
            if let Some(v) = p.ignore_class_prompt {
                set.ignore_class_prompt = v;
            }
            if let Some(v) = p.templates {
                set.templates = v;
            }
            if let Some(v) = p.random_styles {
                set.random_styles = v;
            }
        }
        set.validate().map_err(|e| crate::Error::invalid_input(path, format!("{}: {e}", path.display())))?;
        Ok(set)
    }

    /// Checks that every list is non-empty and every template has a slot.
    pub fn validate(&self) -> Result<()> {
        if self.random_styles.is_empty() {
            fail!(InvalidInput, "prompt list", "the style list is empty");
        }
        if self.templates.iter().any(|t| !t.contains("{}")) {
            fail!(InvalidInput, "prompt list", "every template needs a '{{}}' placeholder");
        }
        Ok(())
    }

    /// The prompt for one class id (255 = ignore) with a style drawn from `rng`, or the
    /// fixed `description` (target-aware mining, PØDA-style).
    pub fn class_prompt(&self, class: u8, rng: &mut Rng, description: Option<&str>) -> Result<String> {
        if class == 255 {
            // Target-aware mining describes the whole target domain, ignore class included.
            return Ok(description.map(str::to_string).unwrap_or_else(|| self.ignore_class_prompt.clone()));
        }
        let name = self.class_names.get(class as usize).ok_or_else(|| {
            crate::Error::invalid_input("class", format!("class id {class} has no name (only {} classes)", self.class_names.len()))
        })?;
        let style = match description {
            Some(d) => d.to_string(),
            None => self.random_styles[rng.below(self.random_styles.len() as u64) as usize].clone(),
        };
        Ok(format!("{style} {name}"))
    }
}

/// A template with `text` in its slot.
pub(crate) fn fill_template(template: &str, text: &str) -> String {
    template.replacen("{}", text, 1)
}

/// Text embeddings of prompts, each averaged over `templates` (none: the text
/// itself) and L2-normalised, with a cache (mining asks for the same prompts often).
pub struct PromptEmbedder<'a> {
    clip: &'a Clip,
    templates: Vec<String>,
    cache: HashMap<String, Tensor>,
}

impl<'a> PromptEmbedder<'a> {
    /// An embedder over `templates` with CLIP's text tower.
    pub fn new(clip: &'a Clip, templates: Vec<String>) -> Result<Self> {
        clip.text()?;
        Ok(PromptEmbedder { clip, templates, cache: HashMap::new() })
    }

    /// Unnormalised mean over templates.
    pub fn embed_mean(&self, text: &str) -> Result<Tensor> {
        let texts: Vec<String> = if self.templates.is_empty() {
            vec![text.to_string()]
        } else {
            self.templates.iter().map(|t| fill_template(t, text)).collect()
        };
        let ctx = self.clip.text()?.config.context_length as usize;
        let tokens = Tokenizer::global().batch(&texts, ctx, false)?;
        let emb = self.clip.encode_text(&tokens)?;
        Ok(emb.mean_dim(0, false, tch::Kind::Float))
    }

    /// L2-normalised class embedding (embed,), on the CLIP device.
    pub fn embed(&mut self, text: &str) -> Result<Tensor> {
        if let Some(t) = self.cache.get(text) {
            return Ok(t.shallow_clone());
        }
        let m = self.embed_mean(text)?;
        let e = &m / m.norm();
        self.cache.insert(text.to_string(), e.shallow_clone());
        Ok(e)
    }
}
