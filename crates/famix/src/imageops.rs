//! 8-bit image operations that reproduce Pillow bit for bit, because the reference
//! pipeline (torchvision transforms on PIL images) uses Pillow for every resize,
//! crop and colour adjustment: two-pass convolution resampling with 22-bit fixed-point
//! coefficients (bilinear, bicubic a = -0.5, with antialiasing on downscale), nearest
//! neighbour as Pillow's affine scaler, and `ImageEnhance`'s blend arithmetic.

use std::path::Path;

use crate::error::{fail, Context, Result};
use tch::{Kind, Tensor};

/// An interleaved 8-bit image (RGB: 3 channels, labels: 1 channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Row-major, channel-interleaved bytes.
    pub data: Vec<u8>,
}

/// Whether a JPEG stream ends with its end-of-image marker (FF D9), allowing the
/// trailing padding some writers add.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xff, 0xd9])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Resampling filters (Pillow's).
pub enum Filter {
    /// Nearest neighbour (labels).
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Bicubic (a = -0.5, as Pillow).
    Bicubic,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Image8 {
    /// A `width` × `height` image filled with `fill`.
    pub fn new(width: usize, height: usize, channels: usize, fill: u8) -> Self {
        Image8 { width, height, channels, data: vec![fill; width * height * channels] }
    }

    /// Wraps raw bytes, checking their length.
    pub fn from_raw(width: usize, height: usize, channels: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * channels {
            let problem = format!("raw image buffer has {} bytes, {}x{}x{} expected", data.len(), width, height, channels);
            return Err(crate::Error::invalid_input("image", problem));
        }
        Ok(Image8 { width, height, channels, data })
    }

    /// Decodes any PNG/JPEG to RGB (as PIL's `.convert('RGB')`).
    pub fn open_rgb(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => crate::Error::invalid_input(path, format!("image {} not found", path.display())),
            _ => crate::Error::from(e).context(format!("cannot open image {}", path.display())),
        })?;
        Self::decode_rgb(&bytes).map_err(|e| e.unreadable(path, "corrupt or unsupported image"))
    }

    /// Decodes PNG/JPEG bytes strictly: a JPEG without its end marker is truncated and
    /// refused (as Pillow does), not decoded as if whole. The image crate's default
    /// limits bound the memory a header may ask for.
    pub fn decode_rgb(bytes: &[u8]) -> Result<Self> {
        if bytes.starts_with(&[0xff, 0xd8]) && !jpeg_has_end(bytes) {
            fail!(InvalidInput, "image", "truncated JPEG (no end-of-image marker)");
        }
        let undecodable = |e: std::io::Error| crate::Error::invalid_input("image", format!("not a decodable image: {e}"));
        // Decoding reads from memory: every failure (an I/O error is data cut short) is the bytes'.
        let img = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(undecodable)?
            .decode()
            .map_err(|e| crate::Error::invalid_input("image", format!("not a decodable PNG or JPEG image: {e}")))?;
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        Ok(Image8 { width: w as usize, height: h as usize, channels: 3, data: rgb.into_raw() })
    }

    /// Writes a PNG atomically (grey, RGB or RGBA).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let buf = self.to_png().with_context(|| format!("cannot encode {}", path.display()))?;
        crate::io::atomic_write(path, &buf)
    }

    /// PNG bytes (grey, RGB or RGBA); the same encoding as [`Image8::save_png`].
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let color = match self.channels {
            1 => image::ExtendedColorType::L8,
            3 => image::ExtendedColorType::Rgb8,
            4 => image::ExtendedColorType::Rgba8,
            c => fail!(InvalidInput, "image", "cannot save a {c}-channel image"),
        };
        use image::ImageEncoder;
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf).write_image(&self.data, self.width as u32, self.height as u32, color)?;
        Ok(buf)
    }

    #[inline]
    /// Pixel (x, y), channel c.
    pub fn px(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// Crop box (left, top, width, height); parts outside the image are `fill`
    /// (as PIL's crop, which pads with zeros).
    pub fn crop(&self, left: i64, top: i64, w: usize, h: usize, fill: u8) -> Image8 {
        let mut out = Image8::new(w, h, self.channels, fill);
        let c = self.channels;
        for y in 0..h {
            let sy = top + y as i64;
            if sy < 0 || sy >= self.height as i64 {
                continue;
            }
            let x0 = left.max(0);
            let x1 = (left + w as i64).min(self.width as i64);
            if x1 <= x0 {
                continue;
            }
            let src = (sy as usize * self.width + x0 as usize) * c;
            let dst = (y * w + (x0 - left) as usize) * c;
            let n = (x1 - x0) as usize * c;
            out.data[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
        }
        out
    }

    /// Mirrored left-right.
    pub(crate) fn hflip(&self) -> Image8 {
        let mut out = self.clone();
        let c = self.channels;
        for y in 0..self.height {
            let row = &self.data[y * self.width * c..(y + 1) * self.width * c];
            let orow = &mut out.data[y * self.width * c..(y + 1) * self.width * c];
            for x in 0..self.width {
                let sx = self.width - 1 - x;
                orow[x * c..x * c + c].copy_from_slice(&row[sx * c..sx * c + c]);
            }
        }
        out
    }

    /// `PIL.Image.resize((w, h), filter)`.
    pub fn resize(&self, w: usize, h: usize, filter: Filter) -> Image8 {
        if w == self.width && h == self.height {
            return self.clone();
        }
        match filter {
            Filter::Nearest => self.resize_nearest(w, h),
            Filter::Bilinear | Filter::Bicubic => self.resize_conv(w, h, filter),
        }
    }

    /// Pillow's `ImagingScaleAffine`: source positions accumulate in f64 steps.
    fn resize_nearest(&self, w: usize, h: usize) -> Image8 {
        let c = self.channels;
        let sx = self.width as f64 / w as f64;
        let sy = self.height as f64 / h as f64;
        let mut xs = Vec::with_capacity(w);
        let mut xo = sx * 0.5;
        for _ in 0..w {
            xs.push((xo as usize).min(self.width - 1));
            xo += sx;
        }
        let mut out = Image8::new(w, h, c, 0);
        let mut yo = sy * 0.5;
        for y in 0..h {
            let yi = (yo as usize).min(self.height - 1);
            yo += sy;
            let srow = &self.data[yi * self.width * c..(yi + 1) * self.width * c];
            let orow = &mut out.data[y * w * c..(y + 1) * w * c];
            for (x, &xi) in xs.iter().enumerate() {
                orow[x * c..x * c + c].copy_from_slice(&srow[xi * c..xi * c + c]);
            }
        }
        out
    }

    fn resize_conv(&self, w: usize, h: usize, filter: Filter) -> Image8 {
        let (kh, bh) = coeffs(self.width, w, filter);
        let (kv, bv) = coeffs(self.height, h, filter);
        let c = self.channels;
        // Rows the vertical pass will read.
        let y_first = bv[0].0;
        let y_last = bv[h - 1].0 + bv[h - 1].1;
        let need_h = w != self.width;
        let need_v = h != self.height;
        let (tmp, tmp_h, row_off) = if need_h {
            let th = y_last - y_first;
            let mut tmp = vec![0u8; w * th * c];
            let ksize = kh.len() / w;
            for y in 0..th {
                let srow = &self.data[(y + y_first) * self.width * c..(y + y_first + 1) * self.width * c];
                for (xx, &(xmin, xn)) in bh.iter().enumerate() {
                    let k = &kh[xx * ksize..xx * ksize + xn];
                    for ch in 0..c {
                        let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                        for (i, &kk) in k.iter().enumerate() {
                            ss += srow[(xmin + i) * c + ch] as i64 * kk as i64;
                        }
                        tmp[(y * w + xx) * c + ch] = clip8(ss);
                    }
                }
            }
            (tmp, th, y_first)
        } else {
            (self.data.clone(), self.height, 0)
        };
        if !need_v {
            return Image8 { width: w, height: tmp_h, channels: c, data: tmp };
        }
        let mut out = vec![0u8; w * h * c];
        let ksize = kv.len() / h;
        for (yy, &(ymin, yn)) in bv.iter().enumerate() {
            let ymin = ymin - row_off;
            let k = &kv[yy * ksize..yy * ksize + yn];
            for x in 0..w {
                for ch in 0..c {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &kk) in k.iter().enumerate() {
                        ss += tmp[((ymin + i) * w + x) * c + ch] as i64 * kk as i64;
                    }
                    out[(yy * w + x) * c + ch] = clip8(ss);
                }
            }
        }
        Image8 { width: w, height: h, channels: c, data: out }
    }

    /// HWC u8 → (C, H, W) u8 tensor.
    pub fn to_tensor_u8(&self) -> Tensor {
        Tensor::from_data_size(&self.data, &[self.height as i64, self.width as i64, self.channels as i64], Kind::Uint8)
            .permute([2, 0, 1])
            .contiguous()
    }

    /// From a (C, H, W) or (H, W) u8 tensor.
    pub fn from_tensor_u8(t: &Tensor) -> Result<Self> {
        let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Uint8);
        let t = if t.dim() == 2 { t.unsqueeze(0) } else { t };
        let (c, h, w) = t.size3()?;
        let t = t.permute([1, 2, 0]).contiguous();
        let mut data = vec![0u8; (c * h * w) as usize];
        t.f_copy_data_u8(&mut data, (c * h * w) as usize)?;
        Ok(Image8 { width: w as usize, height: h as usize, channels: c as usize, data })
    }
}

fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel the first
/// source index and tap count, and fixed-point weights (ksize per output).
#[allow(clippy::needless_range_loop)] // mirrors Pillow's C loops index for index (bit-exact results)
fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> (Vec<i32>, Vec<(usize, usize)>) {
    let (f, support): (fn(f64) -> f64, f64) = match filter {
        Filter::Bicubic => (bicubic, 2.0),
        _ => (bilinear, 1.0),
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut kk = vec![0i32; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    let ss = 1.0 / filterscale;
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // C (int) truncation
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax - xmin;
        let mut ww = 0.0;
        for x in 0..n {
            let v = f((x as f64 + xmin as f64 - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        for x in 0..n {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin, n));
    }
    (kk, bounds)
}

/// Python's `round()` (half to even), as torchvision's centre crop uses it.
pub(crate) fn py_round(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        let f = x.floor();
        if (f as i64) % 2 == 0 {
            f as i64
        } else {
            f as i64 + 1
        }
    } else {
        r as i64
    }
}

/// torchvision `F.center_crop` offsets for a crop of (th, tw) from (h, w).
pub(crate) fn center_crop_offsets(h: usize, w: usize, th: usize, tw: usize) -> (i64, i64) {
    (py_round((h as f64 - th as f64) / 2.0), py_round((w as f64 - tw as f64) / 2.0))
}
