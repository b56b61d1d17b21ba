fn main() -> std::process::ExitCode {
    // Started as cnp's orphan guardian, this process becomes one and never returns.
    cnp::executor::process::guardian::enter();
    cnp::cli::main()
}
