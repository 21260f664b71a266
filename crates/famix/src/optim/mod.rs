//! Optimisers and learning-rate schedules, shared by segmenter training, PIN style
//! mining and CLIP pretraining. Each optimiser keeps its state by parameter name so a
//! checkpoint can save it and a resume restore it exactly.
mod adamw;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub(crate) use schedule::{cosine_lr, poly_lr};
pub use sgd::Sgd;

use std::collections::HashMap;

use crate::error::{bail, Result};
use tch::Tensor;

/// Checks a saved state tensor `key` = `<kind>.<param>` against the parameters: it
/// must name one of them, have its shape and hold finite values. Returns the
/// parameter's name.
fn check_state_tensor<'a>(key: &'a str, kind: &str, t: &Tensor, shapes: &HashMap<&str, Vec<i64>>) -> Result<&'a str> {
    let Some(name) = key.strip_prefix(kind).and_then(|r| r.strip_prefix('.')) else {
        bail!("optimiser state {key} is not a {kind} tensor")
    };
    match shapes.get(name) {
        None => bail!("optimiser state {key} matches no trainable parameter"),
        Some(s) if *s != t.size() => bail!("optimiser state {key} has shape {:?}, the parameter {:?}", t.size(), s),
        _ => {}
    }
    if t.isfinite().logical_not().any().int64_value(&[]) != 0 {
        bail!("optimiser state {key} holds non-finite values");
    }
    Ok(name)
}

/// Name → shape of parameters.
fn shapes(params: &[(String, Tensor)]) -> HashMap<&str, Vec<i64>> {
    params.iter().map(|(n, t)| (n.as_str(), t.size())).collect()
}
