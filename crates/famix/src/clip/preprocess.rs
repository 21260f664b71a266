//! CLIP's image preprocessing (torchvision `Resize(n, BICUBIC)` of the shorter side,
//! `CenterCrop(n)`, RGB, `ToTensor`, `Normalize` with CLIP's statistics), bit-exact
//! with Pillow's resampling.

use tch::{Device, Kind, Tensor};

use crate::imageops::{center_crop_offsets, Filter, Image8};

/// CLIP's RGB normalisation mean.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's RGB normalisation standard deviation.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// torchvision's output size for `Resize(size)` with an int size (shorter side).
pub(crate) fn resize_shorter(w: usize, h: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    }
}

/// Resize + centre crop to `resolution` × `resolution`.
pub fn clip_crop(img: &Image8, resolution: usize) -> Image8 {
    let (w, h) = resize_shorter(img.width, img.height, resolution);
    let r = img.resize(w, h, Filter::Bicubic);
    let (top, left) = center_crop_offsets(r.height, r.width, resolution, resolution);
    r.crop(left, top, resolution, resolution, 0)
}

/// (N, 3, H, W) u8 → f32 normalised with CLIP's mean/std, on `device`.
/// Same arithmetic as `ToTensor` (÷255) then `Normalize` ((x − mean) / std).
pub fn normalize_u8(batch: &Tensor, device: Device) -> Tensor {
    let x = crate::device::upload(batch, device).to_kind(Kind::Float) / 255.0;
    let (mean, std) = mean_std_on(device);
    (x - mean) / std
}

/// CLIP's mean/std as (1, 3, 1, 1) tensors on `device`, made once per device (a fresh
/// upload per batch would synchronise the CUDA stream every time).
fn mean_std_on(device: Device) -> (Tensor, Tensor) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, (Tensor, Tensor)>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap();
    let (m, s) = cache.entry(format!("{device:?}")).or_insert_with(|| {
        let t = |v: &[f64; 3]| Tensor::from_slice(v).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
        (t(&CLIP_MEAN), t(&CLIP_STD))
    });
    (m.shallow_clone(), s.shallow_clone())
}

/// One image, CLIP-preprocessed: (1, 3, R, R) f32 on `device`.
pub fn preprocess(img: &Image8, resolution: usize, device: Device) -> Tensor {
    normalize_u8(&clip_crop(img, resolution).to_tensor_u8().unsqueeze(0), device)
}
