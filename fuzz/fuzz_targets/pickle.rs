//! Any bytes given to famix's pickle VM give a value or a clean error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = famix::io::pickle::load_plain(data);
});
