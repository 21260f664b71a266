//! What a segmentation looks like on disk: train-id PNGs, colour maps and overlays
//! (the files `famix predict` and the demo write).

use std::path::Path;

use crate::error::{Context, Result};
use crate::imageops::Image8;

/// Colour map of train ids (ids without a colour, such as 255, are black).
pub fn colorize(labels: &Image8, palette: &[[u8; 3]]) -> Image8 {
    let mut out = Image8::new(labels.width, labels.height, 3, 0);
    for (i, &l) in labels.data.iter().enumerate() {
        if let Some(c) = palette.get(l as usize) {
            out.data[i * 3..i * 3 + 3].copy_from_slice(c);
        }
    }
    out
}

/// The colour map blended 50/50 over the photo (rounded half up).
pub fn overlay(image: &Image8, color: &Image8) -> Image8 {
    let mut o = image.clone();
    for (p, c) in o.data.iter_mut().zip(&color.data) {
        *p = (*p as u16 + *c as u16).div_ceil(2) as u8;
    }
    o
}

/// How a prediction's ids are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdFormat {
    /// `<stem>_trainid.png`: the 19 train ids (255 = ignore).
    #[default]
    Trainid,
    /// `<stem>_labelIds.png`: Cityscapes label ids (7 = road, ..., 33 = bicycle), the
    /// format of the Cityscapes and ACDC benchmark servers.
    Labelid,
}

impl IdFormat {
    /// "trainid" or "labelid".
    pub fn name(self) -> &'static str {
        match self {
            IdFormat::Trainid => "trainid",
            IdFormat::Labelid => "labelid",
        }
    }
}
crate::names::named!(IdFormat, [IdFormat::Trainid, IdFormat::Labelid]);

/// Train ids → Cityscapes label ids (ids without a label id become 0, "unlabeled").
pub(crate) fn to_label_ids(train_ids: &Image8) -> Image8 {
    let map = crate::data::labels::CITYSCAPES_LABEL_IDS;
    Image8 { data: train_ids.data.iter().map(|&t| map.get(t as usize).copied().unwrap_or(0)).collect(), ..train_ids.clone() }
}

/// Writes `<stem>_trainid.png`, `<stem>_color.png` and, with `with_overlay`,
/// `<stem>_overlay.png` (creating the folder).
pub fn write_outputs(stem: &Path, image: &Image8, labels: &Image8, palette: &[[u8; 3]], with_overlay: bool) -> Result<()> {
    write_outputs_as(stem, image, labels, palette, with_overlay, IdFormat::Trainid)
}

/// [`write_outputs`] with the ids in `format` (`_labelIds.png` instead of
/// `_trainid.png` for [`IdFormat::Labelid`]).
pub fn write_outputs_as(
    stem: &Path,
    image: &Image8,
    labels: &Image8,
    palette: &[[u8; 3]],
    with_overlay: bool,
    format: IdFormat,
) -> Result<()> {
    let dir = stem.parent().unwrap_or(Path::new(""));
    // Built from the OS string, so names that are not UTF-8 keep their bytes.
    let named = |suffix: &str| {
        let mut n = stem.file_name().unwrap_or_default().to_os_string();
        n.push(suffix);
        dir.join(n)
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    match format {
        IdFormat::Trainid => labels.save_png(&named("_trainid.png"))?,
        IdFormat::Labelid => to_label_ids(labels).save_png(&named("_labelIds.png"))?,
    }
    let color = colorize(labels, palette);
    color.save_png(&named("_color.png"))?;
    if with_overlay {
        overlay(image, &color).save_png(&named("_overlay.png"))?;
    }
    Ok(())
}
