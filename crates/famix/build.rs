//! Links famix against the libtorch that torch-sys found and makes its executables
//! (tests, examples) self-contained: an rpath to libtorch, and libtorch_cuda kept in
//! NEEDED (rustc links with --as-needed, which would otherwise drop it and CUDA would
//! never register). Link arguments apply to this package's own executables only, so
//! the libtorch folder is also exported (`cargo:libtorch_lib`, read by dependents as
//! DEP_FAMIX_LIBTORCH_LIB) for the `famix` command and the Python module to do the same.
//! Also compiles the small C++ shim for what tch does not expose (autocast).
use std::path::PathBuf;

fn main() {
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB (is libtorch installed? run `make setup`)"),
    );
    // Resolve symlinks (the project's .venv links to a per-user cache) so the rpath
    // stays valid wherever the checkout moves.
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}", lib.display());
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:libtorch_lib={}", lib.display());
    // ONNX Runtime's wheel sits beside torch's in the same site-packages (`make setup`);
    // the engine loads it from there at run time unless told otherwise.
    if let Some(site) = lib.parent().and_then(|torch| torch.parent()) {
        println!("cargo:rustc-env=FAMIX_ORT_DIR={}", site.join("onnxruntime/capi").display());
    }
    let has_cuda = lib.join("libtorch_cuda.so").exists();
    if has_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,-ltorch_cuda,--as-needed");
    } else {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
    let include = lib.join("../include");
    // torch-sys compiles with the ABI libtorch was built with; PyPI wheels use the C++11 ABI.
    let abi = std::env::var("FAMIX_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/shim.cpp")
        .compile("famix_shim");
}
