fn main() {
    std::process::exit(famix::cli::main());
}
