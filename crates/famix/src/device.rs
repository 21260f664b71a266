//! Where tensors live and how famix talks to the accelerator: `--device
//! auto|cpu|cuda|cuda:N` parsing and naming, synchronisation for timing, a bf16
//! autocast guard (libtorch's thread-local autocast state, which tch does not expose),
//! CUDA allocator statistics, and host → device uploads through pinned memory so the
//! host does not stall on the copy.

use crate::error::{bail, fail, Result};
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
                Err(_) => fail!(InvalidSetting, "device", "bad device {spec:?}: expected auto, cpu, cuda or cuda:N"),
            },
            None => fail!(InvalidSetting, "device", "bad device {spec:?}: expected auto, cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = dev {
        let n = tch::Cuda::device_count() as usize;
        if n == 0 {
            fail!(InvalidSetting, "device", "device {spec:?} requested but CUDA is not available (no GPU, or libtorch without CUDA)");
        }
        if i >= n {
            fail!(InvalidSetting, "device", "device {spec:?} requested but only {n} CUDA device(s) exist");
        }
    }
    Ok(dev)
}

/// `cpu`, `cuda:N`, ...
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
    fn famix_autocast_set(device: i32, enabled: bool, was_enabled: *mut bool) -> bool;
    fn famix_autocast_nesting(delta: i32) -> bool;
    fn famix_autocast_enabled(device: i32) -> bool;
}

/// bf16 autocast for the current thread while alive (tch 0.24 does not expose it).
///
/// Autocast is thread-local libtorch state, so the guard is `!Send` (it must be
/// dropped on the thread that made it). Dropping it restores the state it found:
/// nested guards, or a guard inside code that already enabled autocast, behave like
/// nested `torch.autocast` blocks.
pub struct Autocast {
    /// (device type id, previous enabled flag, whether it entered an autocast
    /// nesting level) when this guard changed anything.
    restore: Option<(i32, bool, bool)>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// Enables bf16 autocast for `d`'s device type when `enabled`; a no-op guard otherwise.
    pub fn new(d: Device, enabled: bool) -> Self {
        let mut guard = Autocast { restore: None, _not_send: std::marker::PhantomData };
        if !enabled {
            return guard;
        }
        let id = if matches!(d, Device::Cuda(_)) { 1 } else { 0 };
        let mut was = false;
        // SAFETY: the shim writes one bool and catches C++ exceptions.
        if unsafe { famix_autocast_set(id, true, &mut was) } {
            // SAFETY: as above.
            unsafe { famix_autocast_nesting(1) };
            guard.restore = Some((id, was, true));
        }
        guard
    }

    /// Turns autocast off for `d`'s device type until the guard drops (the previous
    /// state comes back): for the few ops kept in fp32 inside a bf16 forward.
    pub fn suspend(d: Device) -> Self {
        let mut guard = Autocast { restore: None, _not_send: std::marker::PhantomData };
        let id = if matches!(d, Device::Cuda(_)) { 1 } else { 0 };
        let mut was = false;
        // SAFETY: the shim writes one bool and catches C++ exceptions.
        if unsafe { famix_autocast_set(id, false, &mut was) } && was {
            guard.restore = Some((id, was, false));
        }
        guard
    }

    /// Whether bf16 autocast is on for `d`'s device type on this thread.
    pub(crate) fn is_enabled(d: Device) -> bool {
        // SAFETY: a read of thread-local state; the shim catches exceptions.
        unsafe { famix_autocast_enabled(if matches!(d, Device::Cuda(_)) { 1 } else { 0 }) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some((id, was, nested)) = self.restore {
            let mut ignored = false;
            // SAFETY: as in `new`.
            unsafe {
                famix_autocast_set(id, was, &mut ignored);
                if nested {
                    famix_autocast_nesting(-1);
                }
            }
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

/// Resets the CUDA allocator's peak counter (no-op on CPU).
pub fn cuda_reset_peak(d: Device) {
    if let Device::Cuda(i) = d {
        // SAFETY: as above.
        unsafe { famix_cuda_reset_peak(i as i32) };
    }
}

extern "C" {
    fn famix_set_deterministic(on: bool) -> bool;
    fn famix_deterministic() -> bool;
    fn famix_disable_tf32() -> bool;
    fn famix_tf32_conv() -> bool;
}

/// How exactly CUDA computes, process-wide (libtorch's global context). On the CPU
/// famix's kernels are deterministic and fp32 is IEEE fp32 whatever these say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Numerics {
    /// PyTorch's deterministic-algorithms mode with cuDNN deterministic and cuDNN
    /// benchmark off: a CUDA run repeats bit for bit (an op without a deterministic
    /// kernel is an error instead of a silent difference).
    pub deterministic: bool,
    /// Whether fp32 CUDA convolutions (and matmuls) may run in TF32 (≈1e-3 relative);
    /// libtorch's default for convolutions.
    pub tf32: bool,
}

impl Default for Numerics {
    fn default() -> Self {
        Numerics { deterministic: false, tf32: true }
    }
}

impl Numerics {
    /// The environment variable cuBLAS needs for deterministic matmuls, when these
    /// numerics ask for determinism and the environment does not set it already:
    /// `CUBLAS_WORKSPACE_CONFIG=:4096:8`. The library does not set it (changing the
    /// environment is unsafe once threads run); each front end sets what this returns
    /// before it starts any (the `famix` binary, the Python package).
    pub fn cublas_env(self) -> Option<(&'static str, &'static str)> {
        const VAR: &str = "CUBLAS_WORKSPACE_CONFIG";
        (self.deterministic && std::env::var_os(VAR).is_none()).then_some((VAR, ":4096:8"))
    }

    /// Applies the settings to this process (see [`Numerics::cublas_env`] for the
    /// environment it needs first).
    pub fn apply(self) -> Result<()> {
        // SAFETY: the shim calls setters of libtorch's global context and catches exceptions.
        if !unsafe { famix_set_deterministic(self.deterministic) } {
            bail!("libtorch refused to change its deterministic-algorithms mode");
        }
        // SAFETY: as above.
        if !self.tf32 && !unsafe { famix_disable_tf32() } {
            bail!("libtorch refused to turn TF32 off");
        }
        Ok(())
    }

    /// The settings in effect.
    pub fn current() -> Numerics {
        // SAFETY: reads of libtorch's global context; the shim catches exceptions.
        unsafe { Numerics { deterministic: famix_deterministic(), tf32: famix_tf32_conv() } }
    }
}

/// Turns cuDNN's benchmark mode on for work whose input sizes repeat (training
/// crops, evaluation and prediction at fixed sizes): cuDNN times its algorithms on
/// the first call of each shape and keeps the fastest. Not on the CPU, and not in
/// deterministic mode (benchmarking may pick different algorithms from run to run).
pub fn tune_for_repeated_sizes(d: Device) {
    if matches!(d, Device::Cuda(_)) && !Numerics::current().deterministic {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}

/// Host → device copy that does not stall the host on CUDA: the data is staged in
/// pinned memory and copied asynchronously on the current stream (PyTorch's pinned
/// allocator keeps the staging buffer alive until the copy is done). A plain copy
/// elsewhere.
///
/// Pinning goes through `at::_pin_memory` (tch's `internal_pin_memory`): the public
/// `Tensor.pin_memory(device)` is deprecated in PyTorch 2.11 and prints a warning
/// (and another from `is_pinned`) on every call.
pub(crate) fn upload(t: &tch::Tensor, device: Device) -> tch::Tensor {
    match device {
        Device::Cuda(_) if t.device() == Device::Cpu => t.internal_pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_guards_nest_and_restore() {
        let cpu = Device::Cpu;
        assert!(!Autocast::is_enabled(cpu));
        {
            let _outer = Autocast::new(cpu, true);
            assert!(Autocast::is_enabled(cpu));
            {
                let _inner = Autocast::new(cpu, true);
                assert!(Autocast::is_enabled(cpu));
            }
            // Dropping the inner guard restores the outer state, not "off".
            assert!(Autocast::is_enabled(cpu));
            let _noop = Autocast::new(cpu, false);
            assert!(Autocast::is_enabled(cpu));
            {
                let _fp32 = Autocast::suspend(cpu);
                assert!(!Autocast::is_enabled(cpu));
            }
            // The suspension ends with its guard.
            assert!(Autocast::is_enabled(cpu));
        }
        assert!(!Autocast::is_enabled(cpu));
        // Suspending when autocast is off changes nothing.
        drop(Autocast::suspend(cpu));
        assert!(!Autocast::is_enabled(cpu));
    }

    /// Compile-time proof that `Autocast` is not `Send`: if it were, both impls
    /// below would apply and the call would be ambiguous (a compile error).
    #[test]
    fn autocast_is_not_send() {
        trait AmbiguousIfSend<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSend<()> for T {}
        struct IsSend;
        impl<T: ?Sized + Send> AmbiguousIfSend<IsSend> for T {}
        <Autocast as AmbiguousIfSend<_>>::check();
    }

    #[test]
    fn device_specs_parse_or_name_the_problem() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device(" CPU ").unwrap(), Device::Cpu);
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{e}");
        if !tch::Cuda::is_available() {
            assert!(parse_device("cuda:0").unwrap_err().to_string().contains("CUDA is not available"));
        }
    }
}
