//! CLIP's image preprocessing (torchvision `Resize(n, BICUBIC)` of the shorter side,
//! `CenterCrop(n)`, RGB, `ToTensor`, `Normalize` with CLIP's statistics), bit-exact
//! with Pillow's resampling.

use tch::{Device, Kind, Tensor};

use crate::imageops::{center_crop_offsets, Filter, Image8};

pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// torchvision's output size for `Resize(size)` with an int size (shorter side).
pub fn resize_shorter(w: usize, h: usize, size: usize) -> (usize, usize) {
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
    let x = batch.to_device(device).to_kind(Kind::Float) / 255.0;
    let mean = Tensor::from_slice(&CLIP_MEAN).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD).to_kind(Kind::Float).to_device(device).view([1, 3, 1, 1]);
    (x - mean) / std
}

/// One image, CLIP-preprocessed: (1, 3, R, R) f32 on `device`.
pub fn preprocess(img: &Image8, resolution: usize, device: Device) -> Tensor {
    normalize_u8(&clip_crop(img, resolution).to_tensor_u8().unsqueeze(0), device)
}
