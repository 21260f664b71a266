//! int8 convolutions for ONNX Runtime: a pass over a finished fp32 [`Graph`] (written
//! by the network's blocks, [`crate::nn::onnx`]) that
//! puts `QuantizeLinear → DequantizeLinear` pairs ("QDQ") around the convolutions, in
//! the form ONNX Runtime's CPU provider fuses into integer kernels (`QLinearConv`, u8
//! activations × s8 weights, VNNI where the CPU has it).
//!
//! Which values, and why:
//! - every convolution but the first (it reads the normalised image, whose few
//!   channels make it cheap and whose range is the widest) and the last (the
//!   classifier: quantising its output would round the logits themselves to 256 levels
//!   and create argmax ties) is quantised;
//! - its data input and its output (after its ReLU when the ReLU is its only reader)
//!   are *observed* values: u8, asymmetric, the scale and zero point from the range
//!   the calibration saw ([`ActivationRanges`], [`observed`]), widened to contain 0 as
//!   ONNX requires; every reader of an observed value reads its dequantised copy, so
//!   each quantised convolution reads a DQ and is read only by a Q — the pattern
//!   ONNX Runtime turns into one integer convolution (and a `Relu` before a Q whose
//!   zero point is 0 into nothing);
//! - weights: s8, symmetric, one scale per output channel (max |w| / 127); bias: s32
//!   with scale input scale × weight scale, as `QLinearConv` adds it in the
//!   accumulator.
//!
//! Everything else (residual additions, pools, resizes, concatenations) stays fp32
//! between the dequantised values. The ranges are positional (the n-th observed value
//! of the graph), so one calibration serves every input size and both the fixed-size
//! and any-size graphs of the same network.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::nn::onnx::proto::{data_type, NodeProto, TensorProto};
use crate::nn::onnx::{proto_node, Attr, Graph};

/// The range (min, max) of each observed value over a calibration set, in the order
/// of [`observed`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActivationRanges {
    /// `[min, max]` per observed value.
    pub ranges: Vec<[f32; 2]>,
}

impl ActivationRanges {
    /// The first range that is not finite or whose min exceeds its max, if any.
    pub fn invalid(&self) -> Option<&[f32; 2]> {
        self.ranges.iter().find(|r| !(r[0].is_finite() && r[1].is_finite() && r[0] <= r[1]))
    }
}

/// The indices of the convolutions that get quantised: all but the first and last.
fn quantised_convs(nodes: &[NodeProto]) -> Vec<usize> {
    let convs: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].op_type == "Conv").collect();
    if convs.len() < 3 {
        return Vec::new();
    }
    convs[1..convs.len() - 1].to_vec()
}

/// The readers (node indices) of every value.
fn readers(nodes: &[NodeProto]) -> HashMap<&str, Vec<usize>> {
    let mut r: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for v in &n.input {
            r.entry(v.as_str()).or_default().push(i);
        }
    }
    r
}

/// The values whose ranges the calibration records, in graph order without repeats:
/// for each quantised convolution its data input, then its output (or that of the
/// ReLU that alone reads it).
pub fn observed(nodes: &[NodeProto]) -> Vec<String> {
    let readers = readers(nodes);
    let mut out: Vec<String> = Vec::new();
    for i in quantised_convs(nodes) {
        let y = nodes[i].output[0].as_str();
        let y = match readers.get(y).map(Vec::as_slice) {
            Some(&[r]) if nodes[r].op_type == "Relu" => nodes[r].output[0].as_str(),
            _ => y,
        };
        for v in [nodes[i].input[0].as_str(), y] {
            if !out.iter().any(|o| o == v) {
                out.push(v.to_string());
            }
        }
    }
    out
}

/// u8 scale and zero point covering `[lo, hi]` widened to contain 0 (ONNX Runtime's
/// quantiser's MinMax rule).
fn u8_params(lo: f32, hi: f32) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    (scale, (-lo / scale).round().clamp(0.0, 255.0) as u8)
}

fn tensor(name: String, dims: Vec<i64>, data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto { dims, data_type, name, raw_data: raw }
}

fn floats(t: &TensorProto) -> Vec<f32> {
    t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

impl Graph {
    /// Rewrites this fp32 graph with int8 convolutions from `ranges` (see the module
    /// docs). Fails when the ranges do not fit this graph (another network) or are
    /// not finite.
    pub(crate) fn quantize(&mut self, ranges: &ActivationRanges) -> Result<()> {
        let values = observed(&self.nodes);
        if values.len() != ranges.ranges.len() {
            return Err(Error::incompatible(
                "calibration",
                format!(
                    "the calibration has {} activation ranges, this network {} (calibrated for another architecture?)",
                    ranges.ranges.len(),
                    values.len()
                ),
            ));
        }
        if let Some(r) = ranges.invalid() {
            return Err(Error::invalid_input("calibration", format!("the calibration holds an invalid activation range {r:?}")));
        }
        // Each quantised convolution by its output's name (node indices shift as
        // nodes are inserted) with the value it reads.
        let convs: Vec<(String, String)> =
            quantised_convs(&self.nodes).into_iter().map(|i| (self.nodes[i].output[0].clone(), self.nodes[i].input[0].clone())).collect();
        let mut scales = HashMap::new();
        for (v, r) in values.iter().zip(&ranges.ranges) {
            scales.insert(v.clone(), self.insert_qdq(v, u8_params(r[0], r[1])));
        }
        for (y, x) in convs {
            let x_scale =
                scales.get(&x).copied().ok_or_else(|| Error::msg("internal: a quantised convolution reads an unobserved value"))?;
            self.quantize_weights(&y, x_scale)?;
        }
        Ok(())
    }

    /// Inserts `Q → DQ` after `v` and makes every reader of `v` read the copy;
    /// returns the scale.
    fn insert_qdq(&mut self, v: &str, (scale, zero): (f32, u8)) -> f32 {
        // Scalars: per-tensor parameters (QLinearAveragePool, which ONNX Runtime
        // fuses pools into, accepts only these).
        let s = self.fresh("q_scale");
        self.initializers.push(tensor(s.clone(), vec![], data_type::FLOAT, scale.to_le_bytes().to_vec()));
        let z = self.fresh("q_zero");
        self.initializers.push(tensor(z.clone(), vec![], data_type::UINT8, vec![zero]));
        let (q, dq) = (self.fresh("q"), self.fresh("dq"));
        let at = self.nodes.iter().position(|n| n.output.iter().any(|o| o == v)).map_or(0, |p| p + 1);
        for n in &mut self.nodes {
            for input in n.input.iter_mut().filter(|i| *i == v) {
                *input = dq.clone();
            }
        }
        self.nodes.insert(at, proto_node(dq.clone(), "DequantizeLinear", &[&q, &s, &z], vec![], &dq));
        self.nodes.insert(at, proto_node(q.clone(), "QuantizeLinear", &[v, &s, &z], vec![], &q));
        scale
    }

    /// Replaces the fp32 weight and bias initialisers of the convolution that outputs
    /// `y` by s8 / s32 ones read through per-channel `DequantizeLinear` nodes.
    fn quantize_weights(&mut self, y: &str, x_scale: f32) -> Result<()> {
        let conv = |g: &Graph| g.nodes.iter().position(|n| n.output[0] == y).ok_or_else(|| Error::msg("internal: a convolution vanished"));
        let (w, b) = {
            let n = &self.nodes[conv(self)?];
            (n.input[1].clone(), n.input.get(2).cloned())
        };
        let w = self.take_initializer(&w)?;
        let out_channels = w.dims[0] as usize;
        let wv = floats(&w);
        // At least 1: a zero-size weight must not make chunks(0) panic.
        let per = (wv.len() / out_channels.max(1)).max(1);
        let w_scale: Vec<f32> =
            wv.chunks(per).map(|c| c.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0).map(|s| if s > 0.0 { s } else { 1.0 }).collect();
        let wq: Vec<u8> = wv.iter().enumerate().map(|(k, x)| (x / w_scale[k / per]).round().clamp(-127.0, 127.0) as i8 as u8).collect();
        let dq_w = self.dequantized(&w.name, w.dims.clone(), data_type::INT8, wq, &w_scale, vec![0; out_channels]);
        let dq_b = match b {
            Some(b) => {
                let b = self.take_initializer(&b)?;
                let b_scale: Vec<f32> = w_scale.iter().map(|s| s * x_scale).collect();
                let bq: Vec<u8> = floats(&b)
                    .iter()
                    .zip(&b_scale)
                    .flat_map(|(x, s)| ((x / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes())
                    .collect();
                Some(self.dequantized(&b.name, b.dims.clone(), data_type::INT32, bq, &b_scale, vec![0; 4 * out_channels]))
            }
            None => None,
        };
        // The DequantizeLinear nodes went in before it: find the convolution again.
        let i = conv(self)?;
        self.nodes[i].input[1] = dq_w;
        if let Some(dq_b) = dq_b {
            self.nodes[i].input[2] = dq_b;
        }
        Ok(())
    }

    /// An integer initialiser `raw` of `ty` read through a per-channel (axis 0)
    /// `DequantizeLinear` placed first in the graph; returns the fp32 value's name.
    fn dequantized(&mut self, hint: &str, dims: Vec<i64>, ty: i32, raw: Vec<u8>, scale: &[f32], zero: Vec<u8>) -> String {
        let (q, s, z) = (self.fresh(&format!("{hint}_q")), self.floats("scale", scale), self.fresh("zero"));
        self.initializers.push(tensor(q.clone(), dims, ty, raw));
        self.initializers.push(tensor(z.clone(), vec![scale.len() as i64], ty, zero));
        let out = self.fresh(hint);
        self.nodes.insert(0, proto_node(out.clone(), "DequantizeLinear", &[&q, &s, &z], vec![("axis", Attr::Int(0))], &out));
        out
    }

    /// Removes and returns the float initialiser `name`.
    fn take_initializer(&mut self, name: &str) -> Result<TensorProto> {
        let at = self.initializers.iter().position(|t| t.name == name && t.data_type == data_type::FLOAT);
        at.map(|i| self.initializers.swap_remove(i))
            .ok_or_else(|| Error::msg(format!("internal: convolution weight {name} is not a float initialiser")))
    }
}
