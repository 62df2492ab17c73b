//! `parhelia-model-stand-in`: serves a scripted Anthropic Messages API on 127.0.0.1 until killed.
//!
//! Prints `listening on http://127.0.0.1:PORT` (flushed) once it accepts connections, and writes
//! the port to `--port-file` if given, so a caller can wait for either instead of sleeping.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use parhelia_testkit::model_stand_in::{Script, StandIn, StandInOptions};

#[derive(Parser)]
#[command(version, about = "A scripted stand-in for the Anthropic Messages API")]
struct Args {
    /// The script to serve (JSON: see parhelia_testkit::model_stand_in::script).
    #[arg(long, required_unless_present = "demo", conflicts_with = "demo")]
    script: Option<PathBuf>,
    /// Serve the built-in demo: Write hello.txt ("hi"), Bash `cat hello.txt`, then "done".
    #[arg(long)]
    demo: bool,
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the bound port (decimal, newline-terminated) to this file.
    #[arg(long)]
    port_file: Option<PathBuf>,
    /// Append every request to this file as a JSON line.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Keep full request bodies in the log.
    #[arg(long)]
    log_bodies: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let script = match &args.script {
        Some(path) => Script::from_file(path)?,
        None => Script::demo(),
    };
    let stand_in = StandIn::start_with(
        script,
        StandInOptions {
            port: args.port,
            log_path: args.log,
            log_bodies: args.log_bodies,
            accepted_api_key: None,
        },
    )?;
    if let Some(port_file) = &args.port_file {
        // Write then rename, so a watcher never reads a half-written port.
        let partial = port_file.with_extension("partial");
        std::fs::write(&partial, format!("{}\n", stand_in.addr().port()))
            .and_then(|()| std::fs::rename(&partial, port_file))
            .with_context(|| format!("failed to write {}", port_file.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", stand_in.base_url())
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")?;
    drop(stdout);
    // The server runs on its own thread; this one just waits to be killed.
    loop {
        std::thread::park();
    }
}
