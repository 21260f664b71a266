//! Makes the `famix` executable self-contained: an rpath to the libtorch the library
//! was built against (exported by famix's build script as DEP_FAMIX_LIBTORCH_LIB), and
//! libtorch_cuda kept in NEEDED (rustc links with --as-needed, which would otherwise
//! drop it and CUDA would never register). Applies to the binary, its tests and examples.
use std::path::PathBuf;

fn main() {
    let lib = PathBuf::from(std::env::var("DEP_FAMIX_LIBTORCH_LIB").expect("the famix library did not export its libtorch folder"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}", lib.display());
    let cuda = if lib.join("libtorch_cuda.so").exists() { ",-ltorch_cuda" } else { "" };
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch{cuda},--as-needed");
}
