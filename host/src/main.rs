fn main() -> std::process::ExitCode {
    cnp::cli::main()
}
