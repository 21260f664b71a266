//! Streaming confusion matrix and the reference's metrics (docs/src/design.md §5): pixels whose
//! label is in [0, classes) count; IoU = TP / (TP + FP + FN) per class; mIoU and mean
//! accuracy are NaN-means (classes absent from both ground truth and prediction are
//! left out); overall accuracy = trace / total.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// A confusion matrix accumulated on the device without host synchronisation: each
/// pixel adds one to bin `gt · k + pred`, pixels with an ignored label to a spare bin
/// `k²` (a fixed-size `index_add_`, where `masked_select` and CUDA's `bincount` would
/// each read a size back to the host). The counts are read back once, by [`Confusion::matrix`].
pub struct Confusion {
    /// Number of classes.
    pub classes: usize,
    /// (classes·classes + 1) int64 on the device; row = ground truth, column =
    /// prediction; the last bin collects ignored pixels.
    counts: Tensor,
}

impl Confusion {
    /// An empty matrix for `classes` classes on `device`.
    pub fn new(classes: usize, device: Device) -> Self {
        Confusion { classes, counts: Tensor::zeros([(classes * classes + 1) as i64], (Kind::Int64, device)) }
    }

    /// Adds a batch: `gt` and `pred` are integer tensors of the same shape (any
    /// integer kind, on any device: they are moved to the matrix's device first).
    pub fn add(&mut self, gt: &Tensor, pred: &Tensor) {
        let k = self.classes as i64;
        let device = self.counts.device();
        let gt = gt.to_device(device).to_kind(Kind::Int64).flatten(0, -1);
        let pred = pred.to_device(device).to_kind(Kind::Int64).flatten(0, -1);
        let valid = gt.lt(k).logical_and(&gt.ge(0));
        let idx = (&gt * k + pred).clamp(0, k * k - 1).where_scalarother(&valid, k * k);
        let _ = self.counts.index_add_(0, &idx, &Tensor::ones_like(&idx));
    }

    /// Counts, row-major (row = ground truth).
    pub fn matrix(&self) -> Vec<u64> {
        let k2 = (self.classes * self.classes) as i64;
        Vec::<i64>::try_from(self.counts.narrow(0, 0, k2).to_device(Device::Cpu)).unwrap().into_iter().map(|v| v as u64).collect()
    }

    /// The metrics of the counts so far.
    pub fn metrics(&self) -> Metrics {
        Metrics::from_matrix(&self.matrix(), self.classes)
    }
}

/// The Cityscapes train ids of Synthia's 16-class protocol (as DG papers report it):
/// the 19 classes without terrain, truck and train, which Synthia does not label.
pub const SYNTHIA_16: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18];
/// The 13-class protocol: the 16 without wall, fence and pole.
pub const SYNTHIA_13: [usize; 13] = [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18];

/// Mean IoU over `classes` of a k × k row-major confusion matrix, leaving out
/// classes absent from both ground truth and prediction (as [`Metrics::miou`]);
/// None when none of them is present.
pub(crate) fn subset_miou(m: &[u64], k: usize, classes: &[usize]) -> Option<f64> {
    let ious: Vec<f64> = classes
        .iter()
        .filter(|&&c| c < k)
        .filter_map(|&c| {
            let tp = m[c * k + c];
            let row: u64 = (0..k).map(|j| m[c * k + j]).sum();
            let col: u64 = (0..k).map(|i| m[i * k + c]).sum();
            let denom = row + col - tp;
            (denom > 0).then(|| tp as f64 / denom as f64)
        })
        .collect();
    (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
}

#[derive(Debug, Clone, Serialize)]
/// Segmentation metrics (fractions in [0, 1]).
pub struct Metrics {
    /// Mean IoU over classes present in ground truth or prediction.
    pub miou: f64,
    /// Correct pixels / valid pixels.
    pub overall_acc: f64,
    /// Mean per-class accuracy over classes present in the ground truth.
    pub mean_acc: f64,
    /// None where the class is absent from both ground truth and prediction.
    pub per_class_iou: Vec<Option<f64>>,
    /// Per-class accuracy (None: no ground-truth pixels).
    pub per_class_acc: Vec<Option<f64>>,
    /// Valid pixels counted.
    pub pixels: u64,
}

/// Per-class values keyed by class name (None: the class has no value).
pub fn by_class_name(names: &[String], values: &[Option<f64>]) -> serde_json::Map<String, serde_json::Value> {
    names.iter().zip(values).map(|(n, v)| (n.clone(), serde_json::json!(v))).collect()
}

fn nanmean(v: &[Option<f64>]) -> f64 {
    let vals: Vec<f64> = v.iter().flatten().copied().collect();
    if vals.is_empty() {
        f64::NAN
    } else {
        vals.iter().sum::<f64>() / vals.len() as f64
    }
}

impl Metrics {
    /// Metrics of a k × k row-major matrix.
    pub fn from_matrix(m: &[u64], k: usize) -> Metrics {
        let row = |i: usize| (0..k).map(|j| m[i * k + j]).sum::<u64>();
        let col = |j: usize| (0..k).map(|i| m[i * k + j]).sum::<u64>();
        let total: u64 = m.iter().sum();
        let diag: u64 = (0..k).map(|i| m[i * k + i]).sum();
        let per_class_iou: Vec<Option<f64>> = (0..k)
            .map(|i| {
                let denom = row(i) + col(i) - m[i * k + i];
                (denom > 0).then(|| m[i * k + i] as f64 / denom as f64)
            })
            .collect();
        let per_class_acc: Vec<Option<f64>> = (0..k).map(|i| (row(i) > 0).then(|| m[i * k + i] as f64 / row(i) as f64)).collect();
        Metrics {
            miou: nanmean(&per_class_iou),
            overall_acc: if total > 0 { diag as f64 / total as f64 } else { f64::NAN },
            mean_acc: nanmean(&per_class_acc),
            per_class_iou,
            per_class_acc,
            pixels: total,
        }
    }

    /// The metric keys of `famix eval --json` (also what the Python package's
    /// `evaluate` returns): `miou`, `overall_acc`, `mean_acc`, `per_class_iou` by class
    /// name, `class_names`, and `confusion_matrix` (k rows of the k × k `confusion`).
    pub fn eval_json(&self, names: &[String], confusion: &[u64]) -> serde_json::Value {
        let matrix: Vec<&[u64]> = confusion.chunks(names.len().max(1)).collect();
        serde_json::json!({
            "miou": self.miou, "overall_acc": self.overall_acc, "mean_acc": self.mean_acc,
            "per_class_iou": by_class_name(names, &self.per_class_iou), "class_names": names, "confusion_matrix": matrix,
        })
    }

    /// A per-class IoU table (percentages).
    pub fn table(&self, names: &[String]) -> String {
        let mut s = String::new();
        let w = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
        s.push_str(&format!("{:<w$}  {:>7}  {:>7}\n", "class", "IoU %", "acc %"));
        for (i, n) in names.iter().enumerate() {
            let f = |v: Option<f64>| v.map(|x| format!("{:7.2}", x * 100.0)).unwrap_or_else(|| format!("{:>7}", "-"));
            s.push_str(&format!("{n:<w$}  {}  {}\n", f(self.per_class_iou[i]), f(self.per_class_acc[i])));
        }
        s.push_str(&format!(
            "{:<w$}  {:7.2}\nmean acc {:.2} %, overall acc {:.2} %\n",
            "mIoU",
            self.miou * 100.0,
            self.mean_acc * 100.0,
            self.overall_acc * 100.0
        ));
        s
    }
}
