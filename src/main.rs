//! The `warren` command: parse, set up logging, run, map errors to exit codes.

fn main() -> std::process::ExitCode {
    warren::cli::main()
}
