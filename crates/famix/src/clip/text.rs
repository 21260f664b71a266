//! CLIP's text tower: token + positional embeddings, a causal transformer with
//! QuickGELU MLPs, final LayerNorm, the end-of-text token's state projected into the
//! joint embedding space.

use std::collections::{BTreeSet, HashMap};

use crate::error::{bail, format_err, Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::nn::{LayerNorm, Linear};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// The text tower's architecture, inferred from a checkpoint's shapes.
pub struct TextConfig {
    /// Token vocabulary (49,408 for CLIP).
    pub vocab_size: i64,
    /// Tokens per text (77).
    pub context_length: i64,
    /// Transformer width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// Transformer layers.
    pub layers: i64,
    /// Output embedding size (the joint space).
    pub embed_dim: i64,
}

impl TextConfig {
    /// OpenAI CLIP RN50's text tower.
    pub fn rn50() -> Self {
        TextConfig { vocab_size: 49408, context_length: 77, width: 512, heads: 8, layers: 12, embed_dim: 1024 }
    }
    /// OpenAI CLIP RN101's text tower (RN50's with a 512-wide embedding).
    pub fn rn101() -> Self {
        TextConfig { embed_dim: 512, ..Self::rn50() }
    }
    /// The text tower paired with [`crate::clip::ResNetConfig::tiny`]: CLIP's vocabulary
    /// and context, width 64, 2 layers, a 64-wide embedding.
    pub fn tiny() -> Self {
        TextConfig { vocab_size: 49408, context_length: 77, width: 64, heads: 1, layers: 2, embed_dim: 64 }
    }

    /// CLIP's head rule is width / 64. Real CLIP text towers are ≥ 512 wide; for
    /// narrower (test-sized) towers famix uses 16-wide heads so multi-head attention
    /// stays exercised.
    pub(crate) fn heads_for_width(width: i64) -> i64 {
        if width >= 64 {
            width / 64
        } else {
            (width / 16).max(1)
        }
    }

    /// Infers the text tower from a CLIP state dict; None if it has none.
    pub(crate) fn infer(w: &HashMap<String, Tensor>) -> Result<Option<Self>> {
        let Some(tok) = w.get("token_embedding.weight") else { return Ok(None) };
        let pos = w.get("positional_embedding").ok_or_else(|| format_err!("text tower without positional_embedding"))?;
        let proj = w.get("text_projection").ok_or_else(|| format_err!("text tower without text_projection"))?;
        let layers: BTreeSet<&str> =
            w.keys().filter_map(|k| k.strip_prefix("transformer.resblocks.")).filter_map(|r| r.split('.').next()).collect();
        if layers.is_empty() {
            bail!("text tower without transformer.resblocks");
        }
        let plausible = |what: &str, t: &Tensor, dims: usize, axis: usize, max: i64| -> Result<i64> {
            let size = t.size();
            match size.get(axis) {
                Some(&n) if size.len() == dims && (1..=max).contains(&n) => Ok(n),
                _ => bail!("{what} has shape {size:?} (expected {dims} dimensions, the used one in 1..={max})"),
            }
        };
        let width = plausible("token_embedding.weight", tok, 2, 1, 16384)?;
        Ok(Some(TextConfig {
            vocab_size: plausible("token_embedding.weight", tok, 2, 0, 1 << 20)?,
            context_length: plausible("positional_embedding", pos, 2, 0, 4096)?,
            width,
            heads: Self::heads_for_width(width),
            layers: layers.len() as i64,
            embed_dim: plausible("text_projection", proj, 2, 1, 16384)?,
        }))
    }
}

#[derive(Debug)]
struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: i64,
}

impl ResidualAttentionBlock {
    fn new(p: &nn::Path, width: i64, heads: i64) -> Self {
        let a = p / "attn";
        let bound = (6.0 / (4.0 * width as f64)).sqrt();
        ResidualAttentionBlock {
            ln_1: LayerNorm::new(&(p / "ln_1"), width),
            in_proj_weight: a.var("in_proj_weight", &[3 * width, width], nn::Init::Uniform { lo: -bound, up: bound }),
            in_proj_bias: a.var("in_proj_bias", &[3 * width], nn::Init::Const(0.0)),
            out_proj: Linear::new(&(&a / "out_proj"), width, width, true),
            ln_2: LayerNorm::new(&(p / "ln_2"), width),
            c_fc: Linear::new(&(p / "mlp" / "c_fc"), width, width * 4, true),
            c_proj: Linear::new(&(p / "mlp" / "c_proj"), width * 4, width, true),
            heads,
        }
    }

    /// x: (N, L, W), batch first.
    fn forward(&self, x: &Tensor) -> Tensor {
        let (n, l, w) = x.size3().unwrap();
        let hd = w / self.heads;
        let qkv = self.ln_1.forward(x).linear(&self.in_proj_weight, Some(&self.in_proj_bias));
        let qkv = qkv.view([n, l, 3, self.heads, hd]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None::<f64>, false);
        let a = a.permute([0, 2, 1, 3]).reshape([n, l, w]);
        let x = x + self.out_proj.forward(&a);
        let h = self.c_fc.forward(&self.ln_2.forward(&x));
        let h = &h * (&h * 1.702).sigmoid(); // QuickGELU
        x + self.c_proj.forward(&h)
    }
}

#[derive(Debug)]
/// CLIP's causal text transformer.
pub struct TextTransformer {
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    text_projection: Tensor,
    /// The architecture.
    pub config: TextConfig,
}

impl TextTransformer {
    /// Variables are created at the CLIP state dict's top level (`token_embedding.weight`, ...).
    pub fn new(p: &nn::Path, c: &TextConfig) -> Self {
        let t = p / "transformer" / "resblocks";
        TextTransformer {
            token_embedding: (p / "token_embedding").var("weight", &[c.vocab_size, c.width], nn::Init::Randn { mean: 0.0, stdev: 0.02 }),
            positional_embedding: p.var("positional_embedding", &[c.context_length, c.width], nn::Init::Randn { mean: 0.0, stdev: 0.01 }),
            blocks: (0..c.layers).map(|i| ResidualAttentionBlock::new(&(&t / i), c.width, c.heads)).collect(),
            ln_final: LayerNorm::new(&(p / "ln_final"), c.width),
            text_projection: p.var(
                "text_projection",
                &[c.width, c.embed_dim],
                nn::Init::Randn { mean: 0.0, stdev: 1.0 / (c.width as f64).sqrt() },
            ),
            config: c.clone(),
        }
    }

    /// tokens: (N, context_length) int64, start token first, end token = the largest id
    /// (CLIP pools at argmax). Returns (N, embed_dim).
    pub fn encode(&self, tokens: &Tensor) -> Result<Tensor> {
        let (n, l) = tokens.size2()?;
        if l != self.config.context_length {
            return Err(Error::invalid_input(
                "tokens",
                format!("token rows are {l} long, the text tower's context is {}", self.config.context_length),
            ));
        }
        if tokens.kind() != Kind::Int64 {
            return Err(Error::invalid_input("tokens", format!("tokens must be int64 ids, not {:?}", tokens.kind())));
        }
        if n > 0 {
            let (lo, hi) = (tokens.f_min()?.f_int64_value(&[])?, tokens.f_max()?.f_int64_value(&[])?);
            if lo < 0 || hi >= self.config.vocab_size {
                return Err(Error::invalid_input("tokens", format!("token ids must be in 0..{}, got {lo}..={hi}", self.config.vocab_size)));
            }
        }
        let mut x = Tensor::embedding(&self.token_embedding, tokens, -1, false, false) + &self.positional_embedding;
        for b in &self.blocks {
            x = b.forward(&x);
        }
        let eot = tokens.argmax(-1, false);
        let rows = Tensor::arange(n, (Kind::Int64, tokens.device()));
        // LayerNorm is per token, so pooling first is the same and cheaper.
        let pooled = x.index(&[Some(rows), Some(eot)]);
        Ok(self.ln_final.forward(&pooled).matmul(&self.text_projection))
    }
}
