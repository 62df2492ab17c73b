//! The coordinator benchmark's harness at a small size (issue 17): 50 simulated agents
//! (`parhelia_sim_agent`: the real agent's gRPC service, journal and secret check over a
//! scripted event mix) followed by the real coordinator for a few seconds, which is
//! SIGKILLed and restarted once meanwhile. Every event every agent journaled is stored
//! exactly once. No timing is asserted: `scripts/bench-coordinator` measures.

use std::time::Duration;

use parhelia_sim_agent::EventMix;
use parhelia_sim_agent::bench::{BenchOptions, run};
use parhelia_testkit::harness::bin_dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simulated_agents_across_a_coordinator_restart_lose_and_duplicate_nothing() {
    let parhelia = bin_dir().join("parhelia");
    assert!(
        parhelia.exists(),
        "parhelia is not built: run `cargo build --workspace --bins` first (scripts/test does)"
    );
    let dir = tempfile::Builder::new()
        .prefix("load")
        .tempdir_in("/tmp")
        .unwrap();
    parhelia_testkit::procs::reap_when_killed(dir.path());
    let report = run(BenchOptions {
        agents: 50,
        duration: Duration::from_secs(6),
        kills: 1,
        parhelia_bin: parhelia,
        state_dir: dir.path().join("s"),
        mix: EventMix {
            events_per_second: 4.0,
            ..EventMix::default()
        },
        seed: 17,
        heartbeat_interval: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(120),
    })
    .await
    .unwrap();
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    // Every agent journaled its start, some of the mix and its end.
    assert!(
        report.events_sent >= 50 * 3,
        "only {} events journaled",
        report.events_sent
    );
    assert_eq!(
        report.catch_up_s.len(),
        1,
        "the coordinator was restarted once"
    );
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicated, 0, "{report:?}");
    assert_eq!(report.journal_gaps, 0, "{report:?}");
    assert_eq!(report.events_stored, report.events_sent, "{report:?}");
    assert_eq!(report.sessions_finished, 50, "{report:?}");
}
