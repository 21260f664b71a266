//! Paper-style result tables: rows are checkpoints (e.g. three seeds), columns are
//! target domains (Cityscapes "C", BDD100K "B", Mapillary "M", ACDC night/snow/rain/fog),
//! cells are mIoU in percent, with a per-row mean over the columns and, for several
//! rows, a "mean ± std" row over them (std is the sample standard deviation, n − 1,
//! as papers that report "± std over 3 seeds" compute it).

use serde_json::json;

/// mIoU (0–1) per checkpoint (row) and target (column).
#[derive(Debug, Clone)]
pub struct ResultsTable {
    /// Column labels (targets).
    pub columns: Vec<String>,
    /// (checkpoint label, one mIoU per column).
    pub rows: Vec<(String, Vec<f64>)>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation (n − 1); 0 for one value.
fn std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

impl ResultsTable {
    /// Each row's values followed by their mean over the columns.
    fn with_means(&self) -> Vec<(String, Vec<f64>)> {
        self.rows.iter().map(|(n, v)| (n.clone(), v.iter().copied().chain([mean(v)]).collect())).collect()
    }

    /// Per column (and the mean column): (mean, std) over the rows; None for one row.
    pub fn summary(&self) -> Option<Vec<(f64, f64)>> {
        let rows = self.with_means();
        if rows.len() < 2 {
            return None;
        }
        let cols = rows[0].1.len();
        Some((0..cols).map(|c| rows.iter().map(|r| r.1[c]).collect::<Vec<_>>()).map(|v| (mean(&v), std(&v))).collect())
    }

    fn header(&self) -> Vec<String> {
        std::iter::once("checkpoint".to_string()).chain(self.columns.iter().cloned()).chain(["mean".to_string()]).collect()
    }

    /// The cells as text: mIoU in percent with 2 decimals; the summary as "m ± s".
    fn cells(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .with_means()
            .into_iter()
            .map(|(n, v)| std::iter::once(n).chain(v.iter().map(|x| format!("{:.2}", x * 100.0))).collect())
            .collect();
        if let Some(s) = self.summary() {
            out.push(
                std::iter::once("mean ± std".to_string())
                    .chain(s.iter().map(|(m, d)| format!("{:.2} ± {:.2}", m * 100.0, d * 100.0)))
                    .collect(),
            );
        }
        out
    }

    /// A GitHub-flavoured Markdown table (mIoU %).
    pub fn to_markdown(&self) -> String {
        let h = self.header();
        let rule: Vec<&str> = (0..h.len()).map(|i| if i == 0 { "---" } else { "---:" }).collect();
        let mut s = format!("| {} |\n| {} |\n", h.join(" | "), rule.join(" | "));
        for r in self.cells() {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// A plain-text table with aligned columns (mIoU %).
    pub fn to_text(&self) -> String {
        let rows: Vec<Vec<String>> = std::iter::once(self.header()).chain(self.cells()).collect();
        let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
        let mut s = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, x)| if c == 0 { format!("{x:<w$}", w = widths[c]) } else { format!("{x:>w$}", w = widths[c]) })
                .collect();
            s.push_str(line.join("  ").trim_end());
            s.push('\n');
        }
        s
    }

    /// {"columns", "rows": [{"checkpoint", "miou": {col: v}, "mean"}], "mean", "std"} (fractions 0–1).
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .with_means()
            .into_iter()
            .map(|(n, v)| {
                let cells: serde_json::Map<String, serde_json::Value> =
                    self.columns.iter().zip(&v).map(|(c, x)| (c.clone(), json!(x))).collect();
                json!({"checkpoint": n, "miou": cells, "mean": v.last()})
            })
            .collect();
        let mut out = json!({"columns": self.columns, "rows": rows});
        if let Some(s) = self.summary() {
            let keys = self.columns.iter().cloned().chain(["mean".to_string()]);
            out["mean"] = keys.clone().zip(&s).map(|(k, (m, _))| (k, json!(m))).collect::<serde_json::Map<_, _>>().into();
            out["std"] = keys.zip(&s).map(|(k, (_, d))| (k, json!(d))).collect::<serde_json::Map<_, _>>().into();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three seeds on two targets: means, sample std and the formats, checked against
    /// values worked out by hand (exact to 1e-12).
    #[test]
    fn mean_and_std_over_seeds() {
        let t = ResultsTable {
            columns: vec!["C".into(), "B".into()],
            rows: vec![("s1".into(), vec![0.40, 0.30]), ("s2".into(), vec![0.42, 0.34]), ("s3".into(), vec![0.44, 0.32])],
        };
        let s = t.summary().unwrap();
        // C: mean 0.42, std sqrt((0.0004+0+0.0004)/2) = 0.02; B: mean 0.32, std 0.02;
        // row means 0.35, 0.38, 0.38 → mean 0.37, std sqrt((0.0004+0.0001+0.0001)/2) = sqrt(0.0003).
        let want = [(0.42, 0.02), (0.32, 0.02), (0.37, 0.0003f64.sqrt())];
        for ((m, d), (wm, wd)) in s.iter().zip(want) {
            assert!((m - wm).abs() < 1e-12 && (d - wd).abs() < 1e-12, "{m} {d} vs {wm} {wd}");
        }
        let md = t.to_markdown();
        assert!(md.starts_with("| checkpoint | C | B | mean |\n| --- | ---: | ---: | ---: |\n"), "{md}");
        assert!(md.contains("| mean ± std | 42.00 ± 2.00 | 32.00 ± 2.00 | 37.00 ± 1.73 |"), "{md}");
        assert!(t.to_text().contains("s2"));
        let j = t.to_json();
        assert_eq!(j["rows"][0]["miou"]["B"], 0.30);
        assert!((j["std"]["C"].as_f64().unwrap() - 0.02).abs() < 1e-12);
        let one = ResultsTable { columns: vec!["C".into()], rows: vec![("a".into(), vec![0.5])] };
        assert!(one.summary().is_none() && one.to_json().get("std").is_none());
    }
}
