//! Building an ONNX graph node by node: initialisers from tensors, nodes with
//! attributes, fresh value names. The network modules describe themselves with it
//! (`export` methods next to their `forward`s), so the exported graph follows the
//! same code path structure as famix's own forward.

use tch::{Kind, Tensor};

use super::proto::{attribute_type, data_type, AttributeProto, NodeProto, TensorProto};
use crate::error::Result;
use crate::nn::{fold_bn, BatchNorm2d, Conv2d};

/// An attribute of a node.
pub enum Attr {
    /// One integer.
    Int(i64),
    /// Integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
    /// A string.
    Str(String),
}

/// Nodes and initialisers of a graph under construction.
#[derive(Default)]
pub struct Graph {
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Constant tensors.
    pub initializers: Vec<TensorProto>,
    counter: usize,
    /// The int64 constants made so far, by value (each is stored once).
    int_constants: std::collections::HashMap<Vec<i64>, String>,
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto { name: name.into(), ..Default::default() };
    match a {
        Attr::Int(i) => (p.r#type, p.i) = (attribute_type::INT, i),
        Attr::Ints(v) => (p.r#type, p.ints) = (attribute_type::INTS, v),
        Attr::Float(f) => (p.r#type, p.f) = (attribute_type::FLOAT, f),
        Attr::Str(s) => (p.r#type, p.s) = (attribute_type::STRING, s.into_bytes()),
    }
    p
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A float32 initialiser holding `t` (copied to the CPU).
    pub fn constant(&mut self, hint: &str, t: &Tensor) -> Result<String> {
        let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
        let v: Vec<f32> = Vec::try_from(t.flatten(0, -1))?;
        let name = self.fresh(hint);
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: t.size(), data_type: data_type::FLOAT, name: name.clone(), raw_data: raw });
        Ok(name)
    }

    /// A 1-D int64 initialiser (shared by every use of the same values).
    pub fn ints(&mut self, hint: &str, v: &[i64]) -> String {
        if let Some(name) = self.int_constants.get(v) {
            return name.clone();
        }
        let name = self.fresh(hint);
        self.int_constants.insert(v.to_vec(), name.clone());
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.initializers.push(TensorProto { dims: vec![v.len() as i64], data_type: data_type::INT64, name: name.clone(), raw_data: raw });
        name
    }

    /// A node `op(inputs)` with attributes; returns its (single) output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_named(op, inputs, attrs, &out);
        out
    }

    /// A node whose output gets the name `out` (graph outputs).
    pub fn node_named(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: &str) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name,
            op_type: op.into(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
        });
    }

    /// `conv` (with `bn` folded into it, if given) with `(stride, padding, dilation)`,
    /// then ReLU if asked.
    pub fn conv(
        &mut self,
        x: &str,
        conv: &Conv2d,
        bn: Option<&BatchNorm2d>,
        (stride, pad, dil): (i64, i64, i64),
        relu: bool,
    ) -> Result<String> {
        let (w, b) = match bn {
            Some(bn) => {
                let (w, b) = fold_bn(conv, bn);
                (w, Some(b))
            }
            None => (conv.weight.shallow_clone(), conv.bias.as_ref().map(|b| b.shallow_clone())),
        };
        let k = w.size()[2];
        let wn = self.constant("w", &w)?;
        let bn_name = b.map(|b| self.constant("b", &b)).transpose()?;
        let mut inputs = vec![x, wn.as_str()];
        if let Some(b) = &bn_name {
            inputs.push(b);
        }
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("strides", Attr::Ints(vec![stride, stride])),
            ("pads", Attr::Ints(vec![pad, pad, pad, pad])),
            ("dilations", Attr::Ints(vec![dil, dil])),
        ];
        let y = self.node("Conv", &inputs, attrs);
        Ok(if relu { self.node("Relu", &[&y], vec![]) } else { y })
    }

    /// Average pooling with kernel = stride = `k` (no padding, floor), as CLIP's.
    pub fn avg_pool(&mut self, x: &str, k: i64) -> String {
        self.node("AveragePool", &[x], vec![("kernel_shape", Attr::Ints(vec![k, k])), ("strides", Attr::Ints(vec![k, k]))])
    }

    /// Bilinear resize of `x` (N, C, h, w) to the spatial size of `like`, with
    /// PyTorch's `align_corners=False` sampling (`pytorch_half_pixel`).
    pub fn resize_like(&mut self, x: &str, like: &str) -> String {
        let (s0, s2, s4) = (self.ints("i0", &[0]), self.ints("i2", &[2]), self.ints("i4", &[4]));
        let xs = self.node("Shape", &[x], vec![]);
        let nc = self.node("Slice", &[&xs, &s0, &s2], vec![]);
        let ls = self.node("Shape", &[like], vec![]);
        let hw = self.node("Slice", &[&ls, &s2, &s4], vec![]);
        let sizes = self.node("Concat", &[&nc, &hw], vec![("axis", Attr::Int(0))]);
        self.node(
            "Resize",
            &[x, "", "", &sizes],
            vec![("mode", Attr::Str("linear".into())), ("coordinate_transformation_mode", Attr::Str("pytorch_half_pixel".into()))],
        )
    }
}
