//! The `spawngate` binary: everything lives in the library; see `spawngate::cli`.

fn main() -> std::process::ExitCode {
    spawngate::cli::main()
}
