//! `--device auto|cpu|cuda|cuda:N` parsing.

use crate::error::{bail, Result};
use tch::Device;

/// Parses a device spec; `auto` picks the first CUDA device when one is usable.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    let dev = match s.as_str() {
        "auto" => {
            if tch::Cuda::is_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        "cuda" | "gpu" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => match n.parse::<usize>() {
                Ok(i) => Device::Cuda(i),
                Err(_) => bail!("bad device {spec:?}: expected auto, cpu, cuda or cuda:N"),
            },
            None => bail!("bad device {spec:?}: expected auto, cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = dev {
        let n = tch::Cuda::device_count() as usize;
        if n == 0 {
            bail!("device {spec:?} requested but CUDA is not available (no GPU, or libtorch without CUDA)");
        }
        if i >= n {
            bail!("device {spec:?} requested but only {n} CUDA device(s) exist");
        }
    }
    Ok(dev)
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

/// Waits for queued device work (for timing).
pub fn synchronize(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

extern "C" {
    fn famix_autocast_set(device: i32, enabled: bool);
}

/// bf16 autocast for the current thread while alive (tch 0.24 does not expose it).
pub struct Autocast {
    device: Option<i32>,
}

impl Autocast {
    pub fn new(d: Device, enabled: bool) -> Self {
        if !enabled {
            return Autocast { device: None };
        }
        let id = if matches!(d, Device::Cuda(_)) { 1 } else { 0 };
        // SAFETY: plain calls into libtorch's thread-local autocast state.
        unsafe { famix_autocast_set(id, true) };
        Autocast { device: Some(id) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some(id) = self.device {
            // SAFETY: as above.
            unsafe { famix_autocast_set(id, false) };
        }
    }
}

extern "C" {
    fn famix_cuda_memory(device: i32, allocated: *mut i64, peak: *mut i64, reserved: *mut i64) -> bool;
    fn famix_cuda_reset_peak(device: i32);
}

/// (allocated, peak allocated, reserved) MiB of PyTorch's CUDA allocator; None on CPU.
pub fn cuda_memory_mb(d: Device) -> Option<(f64, f64, f64)> {
    let Device::Cuda(i) = d else { return None };
    let (mut a, mut p, mut r) = (0i64, 0i64, 0i64);
    // SAFETY: the shim writes three integers and catches C++ exceptions.
    let ok = unsafe { famix_cuda_memory(i as i32, &mut a, &mut p, &mut r) };
    let mb = |v: i64| v as f64 / (1024.0 * 1024.0);
    ok.then(|| (mb(a), mb(p), mb(r)))
}

pub fn cuda_reset_peak(d: Device) {
    if let Device::Cuda(i) = d {
        // SAFETY: as above.
        unsafe { famix_cuda_reset_peak(i as i32) };
    }
}

/// Host → device copy that does not stall the host on CUDA: the data is staged in
/// pinned memory and copied asynchronously on the current stream (PyTorch's pinned
/// allocator keeps the staging buffer alive until the copy is done). A plain copy
/// elsewhere.
pub fn upload(t: &tch::Tensor, device: Device) -> tch::Tensor {
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}
