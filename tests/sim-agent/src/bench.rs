//! The coordinator benchmark (`scripts/bench-coordinator`, `docs/benchmarks/coordinator.md`):
//! the real `parhelia` coordinator, unmodified, following N simulated agents of this
//! process over loopback gRPC with real session secrets, optionally SIGKILLed and
//! restarted K times; what it stored is read from its database (read-only) and compared
//! with what the agents journaled.
//!
//! Also what the normal suite's small load test runs (`tests/tests/e2e/load.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use parhelia_contract::sim::SIM_AGENTS_SOCKET_ENV;
use parhelia_proto::SubmitTaskRequest;
use parhelia_proto::coordinator_client::CoordinatorClient;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::transport::{Endpoint, Uri};

use crate::EventMix;
use crate::host::SimHost;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub agents: usize,
    /// How long the agents run once all are launched.
    pub duration: Duration,
    /// How many times the coordinator is SIGKILLed and restarted during `duration`.
    pub kills: u32,
    /// The `parhelia` binary under test.
    pub parhelia_bin: PathBuf,
    /// A fresh directory for the coordinator's state (its path must be short: the
    /// control socket lives in it).
    pub state_dir: PathBuf,
    pub mix: EventMix,
    pub seed: u64,
    pub heartbeat_interval: Duration,
    /// How long to wait for the coordinator to store everything at the end.
    pub drain_timeout: Duration,
}

/// The benchmark's one JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub agents: usize,
    pub duration_s: f64,
    pub events_per_agent_per_s: f64,
    pub heartbeat_interval_ms: u64,
    pub kills: u32,
    /// Events the agents journaled (every seq 1..=last of every journal).
    pub events_sent: u64,
    /// Rows in the coordinator's `events` table.
    pub events_stored: u64,
    /// Journaled events with no row (nor a recorded journal gap).
    pub lost: u64,
    /// Rows beyond one per (container, seq).
    pub duplicated: u64,
    /// Journal gaps the coordinator recorded (each names events it says are lost).
    pub journal_gaps: u64,
    /// Agent journal append (the event's `ts_ms`) to the row being read back by a
    /// separate reader polling every 5 ms, outside the restart windows.
    pub p50_ingest_ms: f64,
    pub p99_ingest_ms: f64,
    pub max_ingest_ms: f64,
    /// The same over every event, restart windows included.
    pub p99_ingest_ms_all: f64,
    /// Coordinator CPU (user + system) over the run, in cores.
    pub coordinator_cpu_cores: f64,
    /// The coordinator's largest resident set seen (sampled every 200 ms).
    pub coordinator_rss_mb: f64,
    /// Its resident set once up, before any task.
    pub coordinator_idle_rss_mb: f64,
    /// (largest − idle) per 1,000 agents.
    pub rss_mb_per_1k_agents: f64,
    /// Seconds from each restart until the coordinator answered again and had stored
    /// everything the agents had journaled by the time it answered.
    pub catch_up_s: Vec<f64>,
    /// Seconds to submit and launch every agent.
    pub launch_s: f64,
    /// Seconds from the agents' end until every event was stored.
    pub drain_s: f64,
    /// Heartbeat rows stored (thinned by the coordinator's retention).
    pub heartbeats_stored: u64,
    /// Tasks the coordinator recorded as completed (every session ends by itself).
    pub sessions_finished: u64,
    /// /proc/loadavg's 1-minute figure at the start and the end.
    pub load_before: f64,
    pub load_after: f64,
    pub cores: usize,
}

fn now_ms() -> i64 {
    parhelia_agent::journal::now_ms()
}

/// The coordinator process under test.
struct Coordinator {
    child: Child,
    started: Instant,
    /// CPU ticks of earlier incarnations.
    cpu_ticks_before: u64,
}

fn start_coordinator(options: &BenchOptions, host: &SimHost, incarnation: u32) -> Result<Child> {
    let log = std::fs::File::create(
        options
            .state_dir
            .join(format!("coordinator-{incarnation}.stderr")),
    )?;
    Command::new(&options.parhelia_bin)
        .arg("--state-dir")
        .arg(&options.state_dir)
        .args(["coordinator", "run"])
        .env(SIM_AGENTS_SOCKET_ENV, host.socket())
        // Resolved at every launch though nothing runs it: any executable will do.
        .env("PARHELIA_CLAUDE_BIN", "/bin/true")
        .env("RUST_LOG", "warn")
        .env("HOME", &options.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", options.parhelia_bin.display()))
}

/// Adds the coordinator's control token to every call.
#[derive(Clone)]
struct ControlToken(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ControlToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("x-parhelia-control-token", self.0.clone());
        Ok(request)
    }
}

type Client = CoordinatorClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, ControlToken>,
>;

/// Connects to the coordinator's control socket with its token, waiting for it.
async fn connect(state_dir: &Path, deadline: Duration) -> Result<Client> {
    let socket = state_dir.join("coordinator.sock");
    let started = Instant::now();
    loop {
        let token = std::fs::read_to_string(state_dir.join("coordinator.token"))
            .ok()
            .map(|t| t.trim().to_string());
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let path = socket.clone();
            let channel = Endpoint::from_static("http://parhelia.coordinator")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await;
            if let Ok(channel) = channel {
                let mut client =
                    CoordinatorClient::with_interceptor(channel, ControlToken(token.parse()?));
                if client
                    .ping(parhelia_proto::PingRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(client);
                }
            }
        }
        if started.elapsed() > deadline {
            anyhow::bail!(
                "the coordinator did not answer on {} within {deadline:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the database reader saw.
#[derive(Default)]
struct Observed {
    /// (ts_ms of the event, ms from append to read back).
    latencies: Vec<(i64, i64)>,
}

/// Polls the events table every 5 ms from its own read-only connection: when each row
/// became queryable, and how many there are (the highest rowid: rows are never deleted
/// and `INSERT OR IGNORE` allocates no rowid for a duplicate).
fn spawn_reader(
    db: PathBuf,
    stop: Arc<AtomicBool>,
    stored: Arc<AtomicI64>,
    observed: Arc<Mutex<Observed>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let conn = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if db.exists()
                && let Ok(conn) = rusqlite::Connection::open_with_flags(
                    &db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
            {
                let _ = conn.busy_timeout(Duration::from_secs(5));
                break conn;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut last_id = 0i64;
        let reading_since = now_ms();
        while !stop.load(Ordering::SeqCst) {
            let rows: Result<Vec<(i64, i64)>, _> = conn
                .prepare_cached("SELECT id, ts_ms FROM events WHERE id > ?1 ORDER BY id")
                .and_then(|mut s| {
                    s.query_map([last_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                });
            let seen = now_ms();
            if let Ok(rows) = rows
                && let Some(&(id, _)) = rows.last()
            {
                last_id = id;
                stored.store(id, Ordering::SeqCst);
                let mut observed = observed.lock().unwrap_or_else(|p| p.into_inner());
                observed.latencies.extend(
                    rows.iter()
                        .filter(|&&(_, ts)| ts >= reading_since)
                        .map(|&(_, ts)| (ts, seen - ts)),
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) … utime(11) stime(12).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn proc_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ticks_per_second() -> f64 {
    // SAFETY-free: sysconf through std is not exposed; Linux's USER_HZ is 100.
    100.0
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64
}

impl Coordinator {
    fn cpu_ticks(&self) -> u64 {
        self.cpu_ticks_before + proc_cpu_ticks(self.child.id()).unwrap_or(0)
    }
}

/// Runs the benchmark. The caller owns a tokio runtime (multi-threaded): the agents,
/// the host and the submissions run on it.
pub async fn run(options: BenchOptions) -> Result<BenchReport> {
    std::fs::create_dir_all(&options.state_dir)?;
    std::fs::write(
        options.state_dir.join("config.toml"),
        format!(
            // The global ceiling far above what the mix spends ($0.002 a turn per agent):
            // the default $50 stops every session of a long 1,000-agent run (E300).
            "[orchestrator]\nmax_concurrent_workers = {}\n\n[agent]\nheartbeat_interval_ms = {}\n\n[local]\nisolation = \"none\"\n\n[budget]\ndefault_ceiling_usd = 1000000.0\n",
            options.agents.clamp(1, 10_000),
            options.heartbeat_interval.as_millis()
        ),
    )?;
    let mut report = BenchReport {
        agents: options.agents,
        duration_s: options.duration.as_secs_f64(),
        events_per_agent_per_s: options.mix.events_per_second,
        heartbeat_interval_ms: options.heartbeat_interval.as_millis() as u64,
        kills: options.kills,
        load_before: load_avg(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        ..BenchReport::default()
    };
    let host = SimHost::start(
        &options.state_dir.join("sim-agents.sock"),
        options.mix.clone(),
        options.seed,
    )?;
    let mut coordinator = Coordinator {
        child: start_coordinator(&options, &host, 0)?,
        started: Instant::now(),
        cpu_ticks_before: 0,
    };
    let client = connect(&options.state_dir, Duration::from_secs(60)).await?;
    let idle_rss_kb = proc_rss_kb(coordinator.child.id()).unwrap_or(0);
    report.coordinator_idle_rss_mb = idle_rss_kb as f64 / 1024.0;

    // The reader runs from before the first launch, so no row is first seen late.
    let stop_reader = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicI64::new(0));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let reader = spawn_reader(
        options.state_dir.join("parhelia.db"),
        Arc::clone(&stop_reader),
        Arc::clone(&stored),
        Arc::clone(&observed),
    );
    // Submit and launch every agent (each submit dispatches at once: the workers
    // allow them all).
    let launch_started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..16 {
        let (mut client, next, agents) = (client.clone(), Arc::clone(&next), options.agents);
        submitters.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= agents {
                    return Ok::<(), anyhow::Error>(());
                }
                client
                    .submit_task(SubmitTaskRequest {
                        prompt: format!("simulated session {n}"),
                        backend: "local".into(),
                        task_type: "sim".into(),
                        ..SubmitTaskRequest::default()
                    })
                    .await
                    .with_context(|| format!("submitting task {n}"))?;
            }
        }));
    }
    for submitter in submitters {
        submitter.await??;
    }
    while host.all_agents().len() < options.agents {
        if launch_started.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!("only {} agents launched", host.all_agents().len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.launch_s = launch_started.elapsed().as_secs_f64();

    let journaled =
        |host: &SimHost| -> u64 { host.all_agents().iter().map(|a| a.journal.last_seq()).sum() };

    // The run, with its kills evenly spaced.
    let run_started = Instant::now();
    let cpu_at_start = coordinator.cpu_ticks();
    let mut max_rss_kb = 0u64;
    let mut restart_windows: Vec<(i64, i64)> = Vec::new();
    let kill_at: Vec<Duration> = (1..=options.kills)
        .map(|i| {
            options
                .duration
                .mul_f64(i as f64 / (options.kills + 1) as f64)
        })
        .collect();
    let mut kills_done = 0usize;
    let mut incarnation = 0u32;
    while run_started.elapsed() < options.duration {
        if let Some(rss) = proc_rss_kb(coordinator.child.id()) {
            max_rss_kb = max_rss_kb.max(rss);
        }
        if kills_done < kill_at.len() && run_started.elapsed() >= kill_at[kills_done] {
            kills_done += 1;
            let killed_ms = now_ms();
            let ticks = coordinator.cpu_ticks();
            coordinator.child.kill()?; // SIGKILL
            coordinator.child.wait()?;
            incarnation += 1;
            coordinator = Coordinator {
                child: start_coordinator(&options, &host, incarnation)?,
                started: Instant::now(),
                cpu_ticks_before: ticks,
            };
            // Caught up: up again (answering its socket) and storing everything the
            // agents had journaled by then.
            let restarted = coordinator.started;
            connect(&options.state_dir, Duration::from_secs(600)).await?;
            let target = journaled(&host) as i64;
            loop {
                if let Some(rss) = proc_rss_kb(coordinator.child.id()) {
                    max_rss_kb = max_rss_kb.max(rss);
                }
                if stored.load(Ordering::SeqCst) >= target {
                    break;
                }
                if restarted.elapsed() > Duration::from_secs(600) {
                    anyhow::bail!(
                        "the restarted coordinator stored {} of {target} events in 600 s",
                        stored.load(Ordering::SeqCst)
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            report.catch_up_s.push(restarted.elapsed().as_secs_f64());
            restart_windows.push((killed_ms, now_ms()));
            continue;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu_ticks = coordinator.cpu_ticks() - cpu_at_start;
    report.coordinator_cpu_cores =
        cpu_ticks as f64 / ticks_per_second() / run_started.elapsed().as_secs_f64();
    report.coordinator_rss_mb = max_rss_kb as f64 / 1024.0;
    report.rss_mb_per_1k_agents =
        max_rss_kb.saturating_sub(idle_rss_kb) as f64 / 1024.0 * 1000.0 / options.agents as f64;

    // The end: every session finishes by itself; the coordinator stores the rest.
    host.finish_all();
    let drain_started = Instant::now();
    let db_path = options.state_dir.join("parhelia.db");
    let db = rusqlite::Connection::open_with_flags(
        &db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    db.busy_timeout(Duration::from_secs(10))?;
    loop {
        let running: i64 = db.query_row(
            "SELECT count(*) FROM tasks WHERE status IN ('running', 'pending')",
            [],
            |r| r.get(0),
        )?;
        let all_stored = stored.load(Ordering::SeqCst) >= journaled(&host) as i64;
        if running == 0 && all_stored {
            break;
        }
        if drain_started.elapsed() > options.drain_timeout {
            eprintln!(
                "bench: still {running} tasks running and {} of {} events stored after {:?}",
                stored.load(Ordering::SeqCst),
                journaled(&host),
                options.drain_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.drain_s = drain_started.elapsed().as_secs_f64();
    // Nothing more is journaled once every agent has ended (or the drain gave up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_reader.store(true, Ordering::SeqCst);
    let _ = reader.join();

    // What was journaled against what was stored.
    let mut per_container: HashMap<String, (i64, i64, i64)> = HashMap::new();
    {
        let mut stmt = db.prepare(
            "SELECT container_id, count(*), count(DISTINCT seq), max(seq) FROM events GROUP BY container_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?),
            ))
        })?;
        for row in rows {
            let (id, counts) = row?;
            per_container.insert(id, counts);
        }
    }
    for agent in host.all_agents() {
        let last = agent.journal.last_seq();
        report.events_sent += last;
        let (rows, distinct, max_seq) = per_container
            .get(&agent.identity.container_id)
            .copied()
            .unwrap_or((0, 0, 0));
        report.duplicated += (rows - distinct).max(0) as u64;
        // Stored seqs beyond the journal's end would be inventions: counted as lost
        // cannot hide them, so they fail the run loudly.
        if max_seq as u64 > last {
            anyhow::bail!(
                "{} has stored seq {max_seq} beyond its journal's {last}",
                agent.identity.container_id
            );
        }
        report.lost += last.saturating_sub(distinct as u64);
    }
    let count = |table: &str| -> Result<u64> {
        let n: i64 = db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(n as u64)
    };
    report.events_stored = count("events")?;
    report.journal_gaps = count("journal_gaps")?;
    report.heartbeats_stored = count("heartbeats")?;
    report.sessions_finished = db.query_row(
        "SELECT count(*) FROM tasks WHERE status = 'completed'",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64;

    let observed = std::mem::take(&mut *observed.lock().unwrap_or_else(|p| p.into_inner()));
    let in_restart = |ts: i64| restart_windows.iter().any(|&(a, b)| ts >= a && ts <= b);
    // Every (journal time ms, ingest ms) pair, for a look at when the tail happens.
    if let Some(path) = std::env::var_os("BENCH_LATENCIES_FILE") {
        let lines: String = observed
            .latencies
            .iter()
            .map(|(ts, l)| format!("{ts} {l}\n"))
            .collect();
        std::fs::write(path, lines)?;
    }
    let mut all: Vec<i64> = observed.latencies.iter().map(|&(_, l)| l).collect();
    let mut steady: Vec<i64> = observed
        .latencies
        .iter()
        .filter(|&&(ts, _)| !in_restart(ts))
        .map(|&(_, l)| l)
        .collect();
    all.sort_unstable();
    steady.sort_unstable();
    report.p50_ingest_ms = percentile(&steady, 50.0);
    report.p99_ingest_ms = percentile(&steady, 99.0);
    report.max_ingest_ms = steady.last().copied().unwrap_or_default() as f64;
    report.p99_ingest_ms_all = percentile(&all, 99.0);
    report.load_after = load_avg();

    // Stop the coordinator (SIGTERM) and the agents.
    let _ = Command::new("kill")
        .arg(coordinator.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if coordinator.child.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = coordinator.child.kill();
    let _ = coordinator.child.wait();
    host.shutdown();
    Ok(report)
}
