//! Any bytes given to famix's checkpoint reader give a result or a clean error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = famix::io::archive::load_bytes(data);
});
