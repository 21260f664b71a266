//! The `famix` command line (the library is `famix`; this binary only parses flags,
//! renders progress and prints results).
mod cli;

fn main() {
    std::process::exit(cli::main());
}
