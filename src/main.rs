fn main() {
    std::process::exit(remora::cli::main());
}
