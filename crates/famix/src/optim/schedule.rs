//! Learning-rate schedules: the reference FAMix's poly decay (segmenter training) and
//! open_clip's linear warm-up + cosine decay (CLIP pretraining).

/// Poly learning rate: lr·(1 − it/max_it)^power, never below `min_lr` (the reference's PolyLR).
pub(crate) fn poly_lr(base: f64, it: u64, max_it: u64, power: f64, min_lr: f64) -> f64 {
    let frac = 1.0 - it as f64 / max_it.max(1) as f64;
    (base * frac.max(0.0).powf(power)).max(min_lr)
}

/// open_clip's `cosine_lr`: linear warm-up to `base` over `warmup` steps
/// (lr = base·(step + 1)/warmup), then a half cosine from `base` to 0 at `total`.
pub(crate) fn cosine_lr(base: f64, step: u64, total: u64, warmup: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = total.saturating_sub(warmup).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        assert_eq!(cosine_lr(1.0, 0, 100, 10), 0.1);
        assert_eq!(cosine_lr(1.0, 9, 100, 10), 1.0);
        assert_eq!(cosine_lr(1.0, 10, 100, 10), 1.0);
        assert!((cosine_lr(1.0, 55, 100, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(1.0, 100, 100, 10).abs() < 1e-12);
        assert_eq!(cosine_lr(2.0, 0, 10, 0), 2.0);
    }

    #[test]
    fn poly_reaches_its_floor() {
        assert_eq!(poly_lr(0.1, 0, 100, 0.9, 1e-6), 0.1);
        assert_eq!(poly_lr(0.1, 100, 100, 0.9, 1e-6), 1e-6);
    }
}
