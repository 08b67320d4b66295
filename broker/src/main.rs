//! The `allmende` binary.

fn main() -> std::process::ExitCode {
    allmende::cli::main()
}
