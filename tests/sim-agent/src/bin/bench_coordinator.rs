//! `parhelia-bench-coordinator`: `scripts/bench-coordinator`'s driver; prints one JSON
//! line (`parhelia_sim_agent::bench::BenchReport`).

use std::time::Duration;

use clap::Parser;
use parhelia_sim_agent::EventMix;
use parhelia_sim_agent::bench::{BenchOptions, run};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Seconds the agents run once all are launched.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// SIGKILL and restart the coordinator this many times during the run.
    #[arg(long, default_value_t = 0)]
    kill_coordinator: u32,
    /// The `parhelia` binary under test.
    #[arg(long)]
    parhelia: std::path::PathBuf,
    /// A fresh, short state directory (the control socket lives in it).
    #[arg(long)]
    state_dir: std::path::PathBuf,
    /// Events each agent journals per second, on average.
    #[arg(long, default_value_t = parhelia_sim_agent::DEFAULT_EVENTS_PER_SECOND)]
    events_per_second: f64,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(BenchOptions {
        agents: args.agents,
        duration: Duration::from_secs(args.duration),
        kills: args.kill_coordinator,
        parhelia_bin: args.parhelia,
        state_dir: args.state_dir,
        mix: EventMix {
            events_per_second: args.events_per_second,
            ..EventMix::default()
        },
        seed: args.seed,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        drain_timeout: Duration::from_secs(300),
    }))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
