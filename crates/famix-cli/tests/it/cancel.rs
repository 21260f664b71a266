//! Cancelling long library work through `Progress::cancelled`. Alone in its test
//! binary: libtorch's random generator is process-global, so a training that runs
//! beside other tests in the same process would not be reproducible.
use crate::common;

use common::*;
use famix::model::checkpoint;
use tch::Device;

/// A caller's cancel request stops training after the current iteration with a
/// checkpoint (`Error::Cancelled`); resuming finishes with exactly the weights of an
/// uninterrupted run (tolerance 0).
#[test]
fn cancelled_training_resumes_bit_exactly() {
    use famix::progress::Progress;
    use famix::train::{train, RunOptions, TrainConfig};
    use std::sync::atomic::{AtomicU64, Ordering};
    struct CancelAfter(u64, AtomicU64);
    impl Progress for CancelAfter {
        fn advance(&self, n: u64) {
            self.1.fetch_add(n, Ordering::Relaxed);
        }
        fn cancelled(&self) -> bool {
            self.1.load(Ordering::Relaxed) >= self.0
        }
    }
    let d = tmpdir();
    let bank = reference_bank(d.path());
    let mut cfg = TrainConfig::reference(
        fixture("clip_a_state.pt.gz"),
        String::new(),
        famix::data::DatasetKind::Gta5,
        fixture("gta5_mini"),
        Some(bank),
    );
    (cfg.iters, cfg.batch, cfg.crop, cfg.split, cfg.log_interval, cfg.val_interval) = (5, 2, 48, "all".into(), 2, 4);
    let mut opts = RunOptions::new(Device::Cpu);
    opts.workers = 2;
    let (straight, split) = (d.path().join("straight"), d.path().join("split"));
    train(&cfg, &straight, false, &opts, &famix::Silent).unwrap();
    let e = train(&cfg, &split, false, &opts, &CancelAfter(3, AtomicU64::new(0))).err().unwrap();
    assert_eq!(e.kind(), famix::ErrorKind::Cancelled, "{e}");
    assert!(e.to_string().contains("iteration 3") && e.to_string().contains("`resume`"), "{e}");
    assert_eq!(checkpoint::load(&split.join("latest"), Device::Cpu, None).unwrap().meta.step, 3);
    let saved: TrainConfig = famix::io::run_folder::read_config(&famix::io::run_folder::RunFolder::new(&split)).unwrap();
    let summary = train(&saved, &split, true, &opts, &famix::Silent).unwrap();
    assert_eq!(summary.steps, 5);
    let (a, b) = (
        checkpoint::load(&straight.join("latest"), Device::Cpu, None).unwrap(),
        checkpoint::load(&split.join("latest"), Device::Cpu, None).unwrap(),
    );
    let va = a.model.vs.variables();
    for (n, t) in b.model.vs.variables() {
        assert_eq!(max_abs_diff(&t, &va[&n]), 0.0, "{n} differs after a cancelled and resumed run");
    }
}
