//! `famix data browse`: a few samples of a dataset with their labels drawn over them
//! and a class legend, to check a layout and its label conversion by eye (what
//! mmsegmentation's `browse_dataset.py` and detectron2's `visualize_data.py` do).
//!
//! Each sample becomes one PNG (image | label colours | overlay, labels after the
//! dataset's conversion to train ids, ignore in black); `index.html` shows them with a
//! legend of the classes present and their share of the shown pixels.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use html_escape::encode_text as esc;

use crate::data::classes::ClassSet;
use crate::data::labels::IGNORE;
use crate::data::Dataset;
use crate::error::{Context, Result};
use crate::render::{colorize, overlay};

/// What [`browse`] wrote.
#[derive(Debug, Clone)]
pub struct BrowseFiles {
    /// The page.
    pub html: PathBuf,
    /// One PNG per sample.
    pub panels: Vec<PathBuf>,
}

/// `n` indices spread evenly over `len` samples (the first one included).
pub fn spread(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n).collect()
}

/// Writes panels of `n` samples of `ds` spread over the split, and `out/index.html`,
/// drawn in the colours of `classes`.
pub fn browse(ds: &Dataset, classes: &ClassSet, n: usize, out: &Path) -> Result<BrowseFiles> {
    ds.require_samples()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut hist = [0u64; 256];
    let mut files = BrowseFiles { html: out.join("index.html"), panels: vec![] };
    let mut figures = String::new();
    for i in spread(ds.len(), n) {
        let (img, lbl) = ds.load(i)?;
        for &v in &lbl.data {
            hist[v as usize] += 1;
        }
        let color = colorize(&lbl, &classes.palette());
        let panel = super::hstack(&[img.clone(), color.clone(), overlay(&img, &color)], 4);
        let name = format!("{i:05}.png");
        panel.save_png(&out.join(&name))?;
        files.panels.push(out.join(&name));
        let src = ds.samples[i].image.display().to_string();
        let _ =
            writeln!(figures, "<figure><img src=\"{name}\" alt=\"{}\"><figcaption>#{i}: {}</figcaption></figure>", esc(&src), esc(&src));
    }
    let page = page(ds, &legend(&hist, classes), &figures);
    crate::io::atomic_write(&files.html, page.as_bytes())?;
    Ok(files)
}

/// The legend: a swatch, the name and the share of pixels of every class present.
fn legend(hist: &[u64; 256], classes: &ClassSet) -> String {
    let total: u64 = hist.iter().sum();
    let (names, palette) = (classes.names(), classes.palette());
    let mut s = String::from("<table><tr><th></th><th>train id</th><th>class</th><th>% of pixels</th></tr>\n");
    let present = (0..names.len()).filter(|&c| hist[c] > 0).chain((hist[IGNORE as usize] > 0).then_some(IGNORE as usize));
    for c in present {
        let (rgb, name) = if c == IGNORE as usize { ([0, 0, 0], "ignore") } else { (palette[c], names[c].as_str()) };
        let pct = hist[c] as f64 * 100.0 / total.max(1) as f64;
        let _ = writeln!(
            s,
            "<tr><td><span class=\"sw\" style=\"background:rgb({},{},{})\"></span></td><td>{c}</td><td>{}</td><td>{pct:.2}</td></tr>",
            rgb[0],
            rgb[1],
            rgb[2],
            esc(name)
        );
    }
    s + "</table>\n"
}

fn page(ds: &Dataset, legend: &str, figures: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>famix data browse</title><style>\
body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:2px 8px}}table{{border-collapse:collapse}}\
.sw{{display:inline-block;width:1.2em;height:1.2em;border:1px solid #888}}figure img{{max-width:100%}}</style></head>\n<body>\n\
<h1>{}</h1>\n<p>{} image/label pairs; each row: image | labels (train ids, ignore in black) | overlay.</p>\n<h2>Legend (classes in the samples shown)</h2>\n{legend}{figures}</body></html>\n",
        esc(&ds.describe()),
        ds.len()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_covers_the_split() {
        assert_eq!(super::spread(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(super::spread(3, 8), vec![0, 1, 2]);
        assert!(super::spread(0, 4).is_empty());
    }
}
