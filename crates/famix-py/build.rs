//! Compiles the module's tensor bridge (csrc/tensor_bridge.cpp) against the libtorch
//! the famix library was built with (exported by famix's build script as
//! DEP_FAMIX_LIBTORCH_LIB) and the Python headers of the interpreter maturin builds
//! for, and links libtorch_python (already loaded by `import torch` when the module is).
use std::path::PathBuf;
use std::process::Command;

fn python_include() -> PathBuf {
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['include'])"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} for its include folder: {e}"));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn main() {
    let lib = PathBuf::from(std::env::var("DEP_FAMIX_LIBTORCH_LIB").expect("the famix library did not export its libtorch folder"));
    println!("cargo:rerun-if-changed=csrc/tensor_bridge.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let include = lib.join("../include");
    let abi = std::env::var("FAMIX_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(python_include())
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/tensor_bridge.cpp")
        .compile("famix_tensor_bridge");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_python");
}
