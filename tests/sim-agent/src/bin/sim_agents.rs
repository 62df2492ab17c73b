//! `parhelia-sim-agents --socket PATH`: a host of simulated agents for a coordinator
//! started with `PARHELIA_SIM_AGENTS_SOCKET=PATH` (see `parhelia_sim_agent`).

use clap::Parser;
use parhelia_sim_agent::EventMix;
use parhelia_sim_agent::host::SimHost;

#[derive(Parser)]
struct Args {
    /// The control socket to listen on.
    #[arg(long)]
    socket: std::path::PathBuf,
    /// Events each agent journals per second, on average.
    #[arg(long, default_value_t = parhelia_sim_agent::DEFAULT_EVENTS_PER_SECOND)]
    events_per_second: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let host = SimHost::start(
        &args.socket,
        EventMix {
            events_per_second: args.events_per_second,
            ..EventMix::default()
        },
        args.seed,
    )?;
    eprintln!("sim agents listening on {}", host.socket().display());
    tokio::signal::ctrl_c().await?;
    host.shutdown();
    Ok(())
}
