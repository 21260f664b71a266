//! Renders the library's progress reports as indicatif bars on stderr (hidden when
//! stderr is not a terminal); notices are printed above the bar.

use std::sync::Mutex;

use famix::progress::{Progress, Unit};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar per task.
#[derive(Default)]
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with(&self, f: impl FnOnce(&ProgressBar)) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            f(b);
        }
    }
}

fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Items => "{msg:>10} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {prefix}",
        Unit::Bytes => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

impl Progress for Bars {
    fn start(&self, task: &str, total: u64, position: u64, unit: Unit) {
        let b = ProgressBar::new(total);
        b.set_style(style(unit));
        b.set_message(task.to_string());
        b.set_position(position);
        if let Some(old) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).replace(b) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        self.with(|b| b.inc(n));
    }
    fn status(&self, s: &str) {
        self.with(|b| b.set_prefix(s.to_string()));
    }
    fn notice(&self, line: &str) {
        let line = super::flags_in(line);
        let guard = self.bar.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}
