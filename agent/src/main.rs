//! `parhelia-agent`: see the library's docs and `docs/dev/contracts.md`.

fn main() -> std::process::ExitCode {
    parhelia_agent::cli::main()
}
