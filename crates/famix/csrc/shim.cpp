// What famix needs from libtorch that tch 0.24 does not expose.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

extern "C" {

// device: 0 = CPU, 1 = CUDA. Sets autocast for that device type to `enabled` with
// bf16 and returns the previous enabled flag in *was_enabled. Returns false (and
// changes nothing) if libtorch throws.
bool famix_autocast_set(int device, bool enabled, bool* was_enabled) {
    try {
        auto dt = device == 1 ? at::kCUDA : at::kCPU;
        *was_enabled = at::autocast::is_autocast_enabled(dt);
        at::autocast::set_autocast_dtype(dt, at::kBFloat16);
        at::autocast::set_autocast_enabled(dt, enabled);
        return true;
    } catch (...) {
        return false;
    }
}

// Enters (+1) or leaves (-1) an autocast region; the cast cache is cleared when
// the outermost region is left, as torch.autocast does.
bool famix_autocast_nesting(int delta) {
    try {
        if (delta > 0) {
            at::autocast::increment_nesting();
        } else if (at::autocast::decrement_nesting() == 0) {
            at::autocast::clear_cache();
        }
        return true;
    } catch (...) {
        return false;
    }
}

bool famix_autocast_enabled(int device) {
    try {
        return at::autocast::is_autocast_enabled(device == 1 ? at::kCUDA : at::kCPU);
    } catch (...) {
        return false;
    }
}

}

#include <c10/core/CachingDeviceAllocator.h>
#include <cstdint>

extern "C" {

// Current and peak bytes allocated by PyTorch's CUDA caching allocator, and bytes
// reserved. Uses c10's device-allocator registry, so no CUDA headers are needed.
// Returns false when there is no CUDA allocator (CPU-only build or no GPU).
bool famix_cuda_memory(int device, int64_t* allocated, int64_t* peak, int64_t* reserved) {
    *allocated = *peak = *reserved = 0;
    try {
        auto* a = c10::getDeviceAllocator(c10::DeviceType::CUDA);
        auto s = a->getDeviceStats(static_cast<c10::DeviceIndex>(device));
        *allocated = s.allocated_bytes[0].current;
        *peak = s.allocated_bytes[0].peak;
        *reserved = s.reserved_bytes[0].current;
        return true;
    } catch (...) {
        return false;
    }
}

void famix_cuda_reset_peak(int device) {
    try {
        c10::getDeviceAllocator(c10::DeviceType::CUDA)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    } catch (...) {
    }
}

}

#include <ATen/Context.h>

extern "C" {

// PyTorch's deterministic-algorithms mode (errors, not warnings, for ops without a
// deterministic kernel), cuDNN's deterministic flag, and cuDNN benchmark off when
// `on`; both flags off (benchmark untouched) otherwise. Returns false if libtorch throws.
bool famix_set_deterministic(bool on) {
    try {
        auto& ctx = at::globalContext();
        ctx.setDeterministicAlgorithms(on, false);
        ctx.setDeterministicCuDNN(on);
        if (on) {
            ctx.setBenchmarkCuDNN(false);
        }
        return true;
    } catch (...) {
        return false;
    }
}

bool famix_deterministic() {
    try {
        return at::globalContext().deterministicAlgorithms();
    } catch (...) {
        return false;
    }
}

// fp32 convolutions and matmuls on CUDA in IEEE fp32 instead of TF32 (PyTorch's
// fp32_precision switches; libtorch 2.11 runs CUDA convolutions in TF32 by default).
bool famix_disable_tf32() {
    try {
        auto& ctx = at::globalContext();
        for (auto op : {at::Float32Op::CONV, at::Float32Op::MATMUL, at::Float32Op::RNN}) {
            ctx.setFloat32Precision(at::Float32Backend::CUDA, op, at::Float32Precision::IEEE);
        }
        return true;
    } catch (...) {
        return false;
    }
}

// Whether fp32 convolutions on CUDA may use TF32.
bool famix_tf32_conv() {
    try {
        return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::CONV) == at::Float32Precision::TF32;
    } catch (...) {
        return false;
    }
}

}

#include <ATen/Functions.h>
#include <ATen/core/grad_mode.h>
#include <vector>

extern "C" {

// One SGD update of n parameters with PyTorch's multi-tensor (foreach) kernels: the
// operations of famix's per-tensor loop, in its order — d = g + p·wd; buf = buf·m + d
// (when bufs is not null), d = buf; p = p − d·lr — as a few launches for all
// parameters instead of ~5 per parameter. The pointers are tch tensors (at::Tensor*).
// Returns false (the caller then uses its loop) if libtorch throws.
bool famix_sgd_foreach(void** params, void** grads, void** bufs, int n, double lr, double wd, double momentum) {
    try {
        at::AutoGradMode no_grad(false);
        std::vector<at::Tensor> p, g, b;
        for (int i = 0; i < n; ++i) {
            p.push_back(*static_cast<at::Tensor*>(params[i]));
            g.push_back(*static_cast<at::Tensor*>(grads[i]));
            if (bufs != nullptr) {
                b.push_back(*static_cast<at::Tensor*>(bufs[i]));
            }
        }
        std::vector<at::Tensor> d = wd != 0.0 ? at::_foreach_add(g, at::_foreach_mul(p, wd)) : g;
        if (bufs != nullptr) {
            at::_foreach_mul_(b, momentum);
            at::_foreach_add_(b, d);
            d = b;
        }
        at::_foreach_sub_(p, at::_foreach_mul(d, lr));
        return true;
    } catch (...) {
        return false;
    }
}

}
