//! Segment one image with the library API.
//!
//! ```sh
//! cargo run --release --example segment -- CHECKPOINT IMAGE [OUT_STEM]
//! ```
//!
//! CHECKPOINT is a famix checkpoint (`runs/gta5/best.safetensors`) or a reference FAMix
//! `.pth`; the train-id and colour PNGs go to `OUT_STEM_trainid.png` /
//! `OUT_STEM_color.png` (default: the image's stem, in the current folder). Without
//! arguments the example makes a random-weight tiny checkpoint and a synthetic image
//! in a temporary folder, so it runs anywhere.

use std::path::PathBuf;

use famix::{Image8, PredictOptions, Segmenter};

fn main() -> famix::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (checkpoint, image, stem) = match args.as_slice() {
        [c, i, rest @ ..] => {
            let stem = rest.first().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(PathBuf::from(i).file_stem().unwrap_or_default()));
            (PathBuf::from(c), Image8::open_rgb(std::path::Path::new(i))?, stem)
        }
        _ => {
            let dir = std::env::temp_dir().join("famix-example");
            let ckpt = famix::model::checkpoint::save_random_tiny(&dir.join("tiny"), 19)?;
            let mut img = Image8::new(128, 96, 3, 0);
            for (i, v) in img.data.iter_mut().enumerate() {
                *v = (i * 7 % 251) as u8;
            }
            (ckpt, img, dir.join("synthetic"))
        }
    };

    let device = if tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu };
    let model = Segmenter::load(&checkpoint, device)?;
    let pred = model.predict(&image, &PredictOptions::default())?;

    famix::render::write_outputs(&stem, &image, &pred.train_ids, &model.config().palette(), false)?;
    let mut counts = vec![0usize; model.config().class_names().len()];
    for &c in &pred.train_ids.data {
        if let Some(n) = counts.get_mut(c as usize) {
            *n += 1;
        }
    }
    for (name, n) in model.config().class_names().iter().zip(counts).filter(|(_, n)| *n > 0) {
        println!("{name:<14} {:6.2} %", n as f64 * 100.0 / pred.train_ids.data.len() as f64);
    }
    println!("wrote {}_trainid.png and {}_color.png", stem.display(), stem.display());
    Ok(())
}
