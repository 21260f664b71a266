//! The report's HTML page: a summary table, the figures with captions, the per-class
//! IoU table and notes. Self-contained (inline CSS, figures as relative links to the
//! PNG files next to it), so the folder can be copied or served as is.

use std::fmt::Write;
use std::path::Path;

use html_escape::encode_text as esc;

use super::{BestValidation, History};
use crate::train::TrainConfig;

const STYLE: &str = "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
th{background:#f2f2f2}figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}\
figcaption{color:#555;margin-top:.3em}.note{color:#a05000}";

pub(super) struct Page {
    body: String,
}

impl Page {
    pub(super) fn new(run: &Path, cfg: &TrainConfig, h: &History) -> Self {
        let mut body = String::new();
        let name = run.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| run.display().to_string());
        let _ = write!(body, "<h1>famix run report: {}</h1>\n<table>\n", esc(&name));
        let done = h.train.last().map(|p| p.iter).unwrap_or(0);
        let best = h.val.iter().max_by(|a, b| a.val_miou.total_cmp(&b.val_miou));
        let val = cfg
            .val
            .as_ref()
            .map(|v| format!("{} {} ({})", v.dataset.name(), v.split, v.data_root.display()))
            .unwrap_or_else(|| "none".into());
        let rows = [
            ("run folder", run.display().to_string()),
            ("run id", cfg.run_id.clone()),
            ("source", format!("{} {} ({})", cfg.dataset.name(), cfg.split, cfg.data_root.display())),
            ("style bank", cfg.styles.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (no style mixing)".into())),
            ("validation", val),
            ("iterations", format!("{done} of {}", cfg.iters)),
            ("batch × crop", format!("{} × {}²", cfg.batch, cfg.crop)),
            ("learning rate", format!("{} (backbone × {})", cfg.lr, cfg.backbone_lr_mult)),
            ("best val mIoU", best.map(|b| format!("{:.2} % at iteration {}", b.val_miou * 100.0, b.iter)).unwrap_or_else(|| "-".into())),
        ];
        for (k, v) in rows {
            let _ = writeln!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        body.push_str("</table>\n");
        Page { body }
    }

    pub(super) fn figure(&mut self, file: &str, caption: &str) {
        let _ = writeln!(
            self.body,
            "<figure><img src=\"{}\" alt=\"{}\" onload=\"this.dataset.loaded=this.naturalWidth\"><figcaption>{}</figcaption></figure>",
            esc(file),
            esc(caption),
            esc(caption)
        );
    }

    pub(super) fn iou_table(&mut self, b: &BestValidation) {
        let _ = writeln!(
            self.body,
            "<h2>Per-class IoU at iteration {} ({})</h2>\n<table><tr><th>class</th><th>IoU %</th><th>pixels (ground truth)</th></tr>",
            b.iter,
            esc(&b.dataset)
        );
        for (i, (name, iou)) in b.class_names.iter().zip(&b.per_class_iou).enumerate() {
            let px: u64 = b.confusion_matrix[i].iter().sum();
            let v = iou.map(|v| format!("{:.2}", v * 100.0)).unwrap_or_else(|| "n/a".into());
            let _ = writeln!(self.body, "<tr><td>{}</td><td>{v}</td><td>{px}</td></tr>", esc(name));
        }
        let _ = writeln!(self.body, "<tr><th>mIoU</th><th>{:.2}</th><th></th></tr></table>", b.miou * 100.0);
    }

    pub(super) fn notes(&mut self, notes: &[String]) {
        for n in notes {
            let _ = writeln!(self.body, "<p class=\"note\">Note: {}</p>", esc(n));
        }
    }

    pub(super) fn finish(self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>famix run report</title><style>{STYLE}</style></head>\n<body>\n{}<p>Written by famix {}.</p>\n</body></html>\n",
            self.body,
            env!("CARGO_PKG_VERSION")
        )
    }
}
