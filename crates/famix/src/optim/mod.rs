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

use crate::error::{Error, Result};
use tch::{Kind, Tensor};

/// Checks a saved state tensor `key` = `<kind>.<param>` against the parameters: it
/// must name one of them, have its shape and element type and hold finite values.
/// Returns the parameter's name.
fn check_state_tensor<'a>(key: &'a str, kind: &str, t: &Tensor, shapes: &HashMap<&str, (Vec<i64>, Kind)>) -> Result<&'a str> {
    let Some(name) = key.strip_prefix(kind).and_then(|r| r.strip_prefix('.')) else {
        return Err(bad_state(format!("optimiser state {key} is not a {kind} tensor")));
    };
    match shapes.get(name) {
        None => return Err(bad_state(format!("optimiser state {key} matches no trainable parameter"))),
        Some((s, _)) if *s != t.size() => {
            return Err(bad_state(format!("optimiser state {key} has shape {:?}, the parameter {:?}", t.size(), s)))
        }
        Some((_, k)) if *k != t.kind() => {
            return Err(bad_state(format!("optimiser state {key} holds {:?} values, the parameter {k:?}", t.kind())))
        }
        _ => {}
    }
    if t.f_isfinite()?.logical_not().any().f_int64_value(&[])? != 0 {
        return Err(bad_state(format!("optimiser state {key} holds non-finite values")));
    }
    Ok(name)
}

/// A saved optimiser state that does not fit the parameters it is restored into
/// ([`Error::Incompatible`]; the caller names the checkpoint).
fn bad_state(problem: String) -> Error {
    Error::incompatible("optimiser state", problem)
}

/// Name → shape and element type of parameters.
fn shapes(params: &[(String, Tensor)]) -> HashMap<&str, (Vec<i64>, Kind)> {
    params.iter().map(|(n, t)| (n.as_str(), (t.size(), t.kind()))).collect()
}
