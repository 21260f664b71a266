//! ONNX export of a segmenter (`famix export`): the whole network — CLIP ResNet at the
//! checkpoint's output stride (with its dilation rule), DeepLabv3+ head, and the final
//! bilinear resize to the input size — as one ONNX graph with every BatchNorm folded
//! into its convolution, so ONNX Runtime, TensorRT and friends can run famix models.
//!
//! Input `image`: float32 (N, 3, H, W), RGB scaled to [0, 1] and normalised with
//! CLIP's mean and std (written into the model's metadata), or with
//! `include_preprocessing` uint8 RGB (N, H, W, 3) normalised inside the graph. Batch,
//! height and width are dynamic unless fixed; with both fixed, every resize and
//! broadcast has a constant shape (integer scales where the sizes divide), which
//! runtimes run faster. Output `logits` (N, K, H, W) float32, or
//! `train_ids` (N, H, W) int64 (the argmax over classes).
//!
//! The graph is built by the network blocks themselves, through the same code that runs
//! them eagerly (`nn::ops`), and encoded with prost from ONNX's schema
//! (`nn::onnx::proto`).

pub(crate) mod qdq;

use std::path::Path;

use prost::Message;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::inference::{INPUT_MEAN, INPUT_STD};
use crate::model::Segmenter;
use crate::nn::onnx::proto::{
    self, data_type, DimValue, Dimension, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use crate::nn::onnx::{Attr, Graph};
use qdq::{observed, ActivationRanges};

/// What the exported graph returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportOutput {
    /// `logits` (N, K, H, W) float32.
    #[default]
    Logits,
    /// `train_ids` (N, H, W) int64.
    Trainid,
}

impl ExportOutput {
    /// "logits" or "trainid".
    pub fn name(self) -> &'static str {
        match self {
            ExportOutput::Logits => "logits",
            ExportOutput::Trainid => "trainid",
        }
    }
}
crate::names::named!(ExportOutput, [ExportOutput::Logits, ExportOutput::Trainid]);

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// ONNX operator set (13–21).
    pub opset: i64,
    /// Fixed input height (dynamic when None).
    pub height: Option<i64>,
    /// Fixed input width (dynamic when None).
    pub width: Option<i64>,
    /// What the graph returns.
    pub output: ExportOutput,
    /// Take uint8 RGB (N, H, W, 3) and normalise inside the graph.
    pub include_preprocessing: bool,
    /// int8 convolutions with these activation ranges (`export::qdq`;
    /// from [`crate::engine::calibration`]); fp32 when None.
    pub int8: Option<ActivationRanges>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: 17, height: None, width: None, output: ExportOutput::Logits, include_preprocessing: false, int8: None }
    }
}

/// The ONNX IR version that goes with an opset (ONNX's versioning table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

fn check(model: &Segmenter, o: &ExportOptions) -> Result<()> {
    let bad = |name: &str, problem: String| Err(Error::invalid_setting(name, problem));
    if !(13..=21).contains(&o.opset) {
        return bad("opset", format!("{} is not supported; famix writes opsets 13 to 21", o.opset));
    }
    for (name, v) in [("height", o.height), ("width", o.width)] {
        if let Some(v) = v {
            model.check_size(v.max(1), v.max(1), 1.0).or_else(|e| bad(name, format!("{v}: {e}")))?;
        }
    }
    Ok(())
}

fn dim(fixed: Option<i64>, name: &str) -> Dimension {
    Dimension { value: Some(fixed.map(DimValue::DimValue).unwrap_or_else(|| DimValue::DimParam(name.into()))) }
}

fn value_info(name: &str, elem: i32, dims: Vec<Dimension>) -> ValueInfoProto {
    let shape = TensorShapeProto { dim: dims };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: elem, shape: Some(shape) }) }),
    }
}

/// uint8 (N, H, W, 3) → normalised float (N, 3, H, W): the same steps as
/// [`crate::model::inference::normalize_u8`] (÷255, −mean, ÷std).
fn preprocessing(g: &mut Graph, x: &str) -> Result<String> {
    let f = g.node("Cast", &[x], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let nchw = g.node("Transpose", &[&f], vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))]);
    let c255 = g.constant("c255", &Tensor::from_slice(&[255f32]))?;
    let mean = g.constant("mean", &Tensor::from_slice(&INPUT_MEAN.map(|v| v as f32)).view([1, 3, 1, 1]))?;
    let std = g.constant("std", &Tensor::from_slice(&INPUT_STD.map(|v| v as f32)).view([1, 3, 1, 1]))?;
    let x = g.node("Div", &[&nchw, &c255], vec![]);
    let x = g.node("Sub", &[&x, &mean], vec![]);
    Ok(g.node("Div", &[&x, &std], vec![]))
}

/// The segmenter as an ONNX model (serialised protobuf).
pub fn to_onnx(model: &Segmenter, o: &ExportOptions) -> Result<Vec<u8>> {
    let (mut g, input, output) = build(model, o)?;
    if let Some(ranges) = &o.int8 {
        g.quantize(ranges)?;
    }
    encode(model, o, g, input, vec![output])
}

/// The fp32 graph of [`to_onnx`] that also returns every value the int8 calibration
/// observes ([`crate::export::qdq::observed`], in that order, after the first
/// output).
pub(crate) fn to_onnx_observing(model: &Segmenter, o: &ExportOptions) -> Result<(Vec<u8>, Vec<String>)> {
    let (g, input, output) = build(model, o)?;
    let values = observed(&g.nodes);
    let mut outputs = vec![output];
    // Float values of any shape (a ValueInfo without a shape; an empty one is a scalar).
    let any_shape = |v: &String| ValueInfoProto {
        name: v.clone(),
        r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type: data_type::FLOAT, shape: None }) }),
    };
    outputs.extend(values.iter().map(any_shape));
    Ok((encode(model, o, g, input, outputs)?, values))
}

/// The network's nodes, and the graph's input and output.
fn build(model: &Segmenter, o: &ExportOptions) -> Result<(Graph, ValueInfoProto, ValueInfoProto)> {
    model.check_weights()?;
    check(model, o)?;
    let mut g = Graph::default();
    let x = if o.include_preprocessing { preprocessing(&mut g, "image")? } else { "image".to_string() };
    if let (Some(h), Some(w)) = (o.height, o.width) {
        g.fix_size(&x, h, w);
    }
    let (low, high) = model.backbone.export(&mut g, &x);
    let small = model.head.export(&mut g, &low, &high);
    let logits = g.resize_like(&small, &x);
    g.check()?;
    let (n, h, w) = (dim(None, "batch"), dim(o.height, "height"), dim(o.width, "width"));
    let input = if o.include_preprocessing {
        value_info("image", data_type::UINT8, vec![n.clone(), h.clone(), w.clone(), dim(Some(3), "")])
    } else {
        value_info("image", data_type::FLOAT, vec![n.clone(), dim(Some(3), ""), h.clone(), w.clone()])
    };
    let k = model.config().head.num_classes;
    let output = match o.output {
        ExportOutput::Logits => {
            g.node_named("Identity", &[&logits], vec![], "logits");
            value_info("logits", data_type::FLOAT, vec![n, dim(Some(k), ""), h, w])
        }
        ExportOutput::Trainid => {
            g.node_named("ArgMax", &[&logits], vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))], "train_ids");
            value_info("train_ids", data_type::INT64, vec![n, h, w])
        }
    };
    Ok((g, input, output))
}

fn encode(model: &Segmenter, o: &ExportOptions, g: Graph, input: ValueInfoProto, outputs: Vec<ValueInfoProto>) -> Result<Vec<u8>> {
    let graph = proto::GraphProto {
        node: g.nodes,
        name: "famix_segmenter".into(),
        initializer: g.initializers,
        input: vec![input],
        output: outputs,
    };
    let m = ModelProto {
        ir_version: ir_version(o.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: o.opset }],
        producer_name: "famix".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "FAMix segmenter (CLIP ResNet + DeepLabv3+), exported by famix".into(),
        graph: Some(graph),
        metadata_props: metadata(model, o)?,
    };
    Ok(m.encode_to_vec())
}

fn metadata(model: &Segmenter, o: &ExportOptions) -> Result<Vec<StringStringEntryProto>> {
    let input = if o.include_preprocessing {
        "uint8 RGB (N, H, W, 3); normalised inside the graph".to_string()
    } else {
        format!("float32 RGB (N, 3, H, W): x / 255, then (x - mean) / std per channel, mean {INPUT_MEAN:?}, std {INPUT_STD:?} (CLIP's)")
    };
    let kv = [
        ("famix.input", input),
        ("famix.mean", serde_json::to_string(&INPUT_MEAN)?),
        ("famix.std", serde_json::to_string(&INPUT_STD)?),
        ("famix.class_names", serde_json::to_string(&model.config().class_names())?),
        ("famix.palette", serde_json::to_string(&model.config().palette())?),
        ("famix.classes", serde_json::to_string(&model.config().classes)?),
        ("famix.output_stride", model.config().output_stride.value().to_string()),
        ("famix.output", format!("{:?}", o.output).to_lowercase()),
        ("famix.precision", if o.int8.is_some() { "int8 (QDQ convolutions)" } else { "fp32" }.to_string()),
    ];
    Ok(kv.into_iter().map(|(k, v)| StringStringEntryProto { key: k.into(), value: v }).collect())
}

/// Writes the model to `path` atomically.
pub fn write_onnx(model: &Segmenter, o: &ExportOptions, path: &Path) -> Result<()> {
    let bytes = to_onnx(model, o)?;
    crate::io::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{OutputStride, ResNetConfig};
    use crate::model::{FreezePolicy, HeadConfig, SegmenterConfig};

    /// Op types and Resize input counts of the tiny model's graph at a size.
    fn ops(height: Option<i64>, width: Option<i64>) -> (usize, Vec<usize>) {
        let mut cfg = SegmenterConfig::new(ResNetConfig::tiny(), 19, OutputStride::Os16, FreezePolicy::Synthetic);
        cfg.head = HeadConfig::tiny(19);
        let m = Segmenter::new(cfg, tch::Device::Cpu).unwrap();
        let bytes = to_onnx(&m, &ExportOptions { height, width, ..Default::default() }).unwrap();
        let g = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let shapes = g.node.iter().filter(|n| n.op_type == "Shape").count();
        (shapes, g.node.iter().filter(|n| n.op_type == "Resize").map(|n| n.input.len()).collect())
    }

    /// A graph for a fixed size whose sizes divide resizes by constant integer scales
    /// and broadcasts to constant shapes (it reads no shape at run time); a dynamic
    /// graph resizes to sizes read at run time. (Both compute the same logits:
    /// crates/famix-cli/tests/it/engine.rs.)
    #[test]
    fn fixed_size_graphs_have_constant_resizes() {
        assert_eq!(ops(Some(64), Some(96)), (0, vec![3, 3]));
        let (shapes, resizes) = ops(None, None);
        assert!(shapes > 0 && resizes == vec![4, 4], "{shapes} {resizes:?}");
    }

    /// The int8 graph: every convolution but the first and the last reads a
    /// dequantised value and int8 weights (per-channel scales) and is read only by a
    /// QuantizeLinear; the first and last keep fp32 weights; ranges of another length
    /// or not finite are refused.
    #[test]
    fn int8_graphs_quantise_all_but_the_first_and_last_convolution() {
        let mut cfg = SegmenterConfig::new(ResNetConfig::tiny(), 19, OutputStride::Os16, FreezePolicy::Synthetic);
        cfg.head = HeadConfig::tiny(19);
        let m = Segmenter::new(cfg, tch::Device::Cpu).unwrap();
        let (_, values) = to_onnx_observing(&m, &ExportOptions::default()).unwrap();
        let ranges = ActivationRanges { ranges: vec![[-1.0, 2.0]; values.len()] };
        let bytes = to_onnx(&m, &ExportOptions { int8: Some(ranges.clone()), ..Default::default() }).unwrap();
        let g = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let producer = |v: &str| g.node.iter().find(|n| n.output[0] == v).map(|n| n.op_type.as_str()).unwrap_or("initialiser");
        let convs: Vec<_> = g.node.iter().filter(|n| n.op_type == "Conv").collect();
        assert!(convs.len() > 3);
        for (k, c) in convs.iter().enumerate() {
            let edge = k == 0 || k == convs.len() - 1;
            let expect = if edge { "initialiser" } else { "DequantizeLinear" };
            assert_eq!(producer(&c.input[1]), expect, "conv {k} weight");
            if !edge {
                assert_eq!(producer(&c.input[0]), "DequantizeLinear", "conv {k} input");
                let readers: Vec<_> = g.node.iter().filter(|n| n.input.contains(&c.output[0])).map(|n| n.op_type.as_str()).collect();
                assert!(readers == ["QuantizeLinear"] || readers == ["Relu"], "conv {k} readers {readers:?}");
            }
        }
        let q = g.node.iter().filter(|n| n.op_type == "QuantizeLinear").count();
        assert_eq!(q, values.len(), "one Q per observed value");
        let int8 = g.initializer.iter().filter(|t| t.data_type == data_type::INT8).count();
        assert_eq!(int8, 2 * (convs.len() - 2), "weights and their zero points");
        let short = ActivationRanges { ranges: vec![[0.0, 1.0]; values.len() - 1] };
        let e = to_onnx(&m, &ExportOptions { int8: Some(short), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("another architecture"), "{e}");
        let mut nan = ranges;
        nan.ranges[3] = [f32::NAN, 1.0];
        assert!(to_onnx(&m, &ExportOptions { int8: Some(nan), ..Default::default() }).is_err());
    }
}
