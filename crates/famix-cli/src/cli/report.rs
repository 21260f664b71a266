//! `famix report RUN_DIR`: an HTML page with the run's figures (see `famix::report`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use famix::report::{write_report, ReportOptions};

#[derive(Args)]
pub struct ReportArgs {
    /// Run folder written by `famix train`
    run: PathBuf,
    /// Output folder for index.html and the figures [default: RUN_DIR/report]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validation samples in the prediction grid (0: none)
    #[arg(long, default_value_t = 4)]
    samples: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn report(a: ReportArgs) -> Result<i32> {
    let out = a.out.clone().unwrap_or_else(|| a.run.join("report"));
    let files = write_report(&a.run, &out, &ReportOptions { samples: a.samples, device: a.device.device })?;
    for n in &files.notes {
        eprintln!("note: {n}");
    }
    for f in &files.figures {
        eprintln!("  {}", f.display());
    }
    println!("{}", files.html.display());
    Ok(0)
}
