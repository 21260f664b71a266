// What famix needs from libtorch that tch 0.24 does not expose.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

extern "C" {

// device: 0 = CPU, 1 = CUDA. Enables bf16 autocast for that device type.
void famix_autocast_set(int device, bool enabled) {
    auto dt = device == 1 ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_dtype(dt, at::kBFloat16);
    at::autocast::set_autocast_enabled(dt, enabled);
    if (enabled) {
        at::autocast::increment_nesting();
    } else if (at::autocast::decrement_nesting() == 0) {
        at::autocast::clear_cache();
    }
}

bool famix_autocast_enabled(int device) {
    return at::autocast::is_autocast_enabled(device == 1 ? at::kCUDA : at::kCPU);
}

}
