//! The ingest writer: event ingestion's database writes (events, heartbeats and the
//! compute they charge), off the async workers on a thread of its own with its own
//! connection, batched into transactions (issue 17).
//!
//! Every follower (`ingest.rs`) sends its write and awaits the answer, which comes
//! only once the write is committed: so a follower never reads past what is durable,
//! and the queue holds at most one write per follower. The thread takes whatever is
//! queued (up to [`MAX_BATCH`] writes) into one `IMMEDIATE` transaction, each write in
//! a savepoint of its own (one that fails is rolled back alone and answered with its
//! error; the others commit), so under load one `fsync` covers many writes, and with
//! one follower it is one transaction per write as before. Nothing waits to fill a
//! batch.
//!
//! Every other write of the coordinator stays on [`Db`]'s own connection; SQLite
//! serializes the two writers (WAL; the busy timeout makes either wait for the other).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow};
use parhelia_proto::{Event, Heartbeat};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::ledger::{charge_compute_in, gpu_chosen_in, last_heartbeat_ts_in, task_limits_in};
use super::{ContainerRef, RecordedEvent, record_event_in, record_heartbeat_in};
use crate::budget;
use crate::config::Config;

/// The most writes one transaction takes.
pub const MAX_BATCH: usize = 1024;

/// What storing a heartbeat did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeartbeatStored {
    /// The compute charged for the interval it covers (0: none).
    pub charged_usd: f64,
}

enum Job {
    Events {
        target: ContainerRef,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<Vec<RecordedEvent>>>,
    },
    Heartbeat {
        target: ContainerRef,
        heartbeat: Heartbeat,
        config: Arc<Config>,
        reply: oneshot::Sender<Result<HeartbeatStored>>,
    },
}

/// The answer a job gets once its batch is committed (or not).
enum Done {
    Events(
        oneshot::Sender<Result<Vec<RecordedEvent>>>,
        Result<Vec<RecordedEvent>>,
    ),
    Heartbeat(
        oneshot::Sender<Result<HeartbeatStored>>,
        Result<HeartbeatStored>,
    ),
}

impl Done {
    fn fail(self, why: &str) -> Done {
        match self {
            Done::Events(reply, Ok(_)) => Done::Events(reply, Err(anyhow!("{why}"))),
            Done::Heartbeat(reply, Ok(_)) => Done::Heartbeat(reply, Err(anyhow!("{why}"))),
            failed => failed,
        }
    }

    fn send(self) {
        // A follower that stopped waiting (shutdown) no longer needs the answer.
        match self {
            Done::Events(reply, result) => {
                let _ = reply.send(result);
            }
            Done::Heartbeat(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// The handle followers send their writes through. Dropping it (with the [`super::Db`])
/// ends the thread once the writes queued are done.
pub struct IngestWriter {
    jobs: mpsc::Sender<Job>,
}

impl IngestWriter {
    /// Opens a second connection to the (already migrated) database at `path` and
    /// starts the writer's thread on it.
    pub fn start(path: &Path) -> Result<IngestWriter> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening {} for the ingest writer", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // As the main connection: every commit is on disk before it is answered.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("parhelia-ingest-writer".into())
            .spawn(move || run(conn, queue))
            .context("starting the ingest writer's thread")?;
        Ok(IngestWriter { jobs })
    }

    /// Stores a container's events in order (a `(container, seq)` stored before is
    /// left alone), each with what it means for its session and task; answered once
    /// committed. A caller whose event finished a task advances the generation.
    pub async fn events(
        &self,
        target: &ContainerRef,
        events: Vec<Event>,
    ) -> Result<Vec<RecordedEvent>> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Events {
                target: target.clone(),
                events,
                reply,
            })
            .map_err(|_| anyhow!("the ingest writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the ingest writer has stopped"))?
    }

    /// Stores a heartbeat and charges the compute of the interval since the
    /// container's previous one (its agent's uptime for the first) at the rate of the
    /// task's resources; answered once committed.
    pub async fn heartbeat(
        &self,
        target: &ContainerRef,
        heartbeat: Heartbeat,
        config: Arc<Config>,
    ) -> Result<HeartbeatStored> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Heartbeat {
                target: target.clone(),
                heartbeat,
                config,
                reply,
            })
            .map_err(|_| anyhow!("the ingest writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the ingest writer has stopped"))?
    }
}

fn run(mut conn: Connection, queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        for done in write_batch(&mut conn, batch) {
            done.send();
        }
    }
}

/// Writes a batch in one transaction, each job in its own savepoint.
fn write_batch(conn: &mut Connection, batch: Vec<Job>) -> Vec<Done> {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let why = format!("cannot begin the ingest transaction: {e}");
            return batch.into_iter().map(|job| failed(job, &why)).collect();
        }
    };
    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        if let Err(e) = tx.execute_batch("SAVEPOINT ingest_job") {
            done.push(failed(job, &format!("cannot begin a savepoint: {e}")));
            continue;
        }
        let answer = apply(&tx, job);
        let ok = match &answer {
            Done::Events(_, result) => result.is_ok(),
            Done::Heartbeat(_, result) => result.is_ok(),
        };
        let end = if ok {
            "RELEASE ingest_job"
        } else {
            "ROLLBACK TO ingest_job; RELEASE ingest_job"
        };
        match tx.execute_batch(end) {
            Ok(()) => done.push(answer),
            Err(e) => done.push(answer.fail(&format!("cannot end a savepoint: {e}"))),
        }
    }
    if let Err(e) = tx.commit() {
        let why = format!("cannot commit the ingest transaction: {e}");
        return done.into_iter().map(|d| d.fail(&why)).collect();
    }
    done
}

fn failed(job: Job, why: &str) -> Done {
    match job {
        Job::Events { reply, .. } => Done::Events(reply, Err(anyhow!("{why}"))),
        Job::Heartbeat { reply, .. } => Done::Heartbeat(reply, Err(anyhow!("{why}"))),
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, job: Job) -> Done {
    match job {
        Job::Events {
            target,
            events,
            reply,
        } => {
            let result = events
                .iter()
                .map(|event| record_event_in(tx, &target, event))
                .collect();
            Done::Events(reply, result)
        }
        Job::Heartbeat {
            target,
            heartbeat,
            config,
            reply,
        } => {
            let result = (|| {
                let previous = last_heartbeat_ts_in(tx, &target.container_id)?;
                record_heartbeat_in(tx, &target.container_id, &heartbeat)?;
                let charged_usd = charge_heartbeat_in(tx, &target, &heartbeat, previous, &config)?;
                Ok(HeartbeatStored { charged_usd })
            })();
            Done::Heartbeat(reply, result)
        }
    }
}

/// Accrues a heartbeat's compute charge: the time since the container's previous
/// heartbeat (its agent's uptime for the first) at the rate of the task's resources
/// and the heartbeat's usage. A replayed or out-of-order heartbeat covers no new time
/// and is not charged; a zero charge (the local backend's default rate) is not stored.
fn charge_heartbeat_in(
    tx: &rusqlite::Transaction<'_>,
    target: &ContainerRef,
    heartbeat: &Heartbeat,
    previous_ts_ms: Option<i64>,
    config: &Config,
) -> Result<f64> {
    let elapsed_ms = match previous_ts_ms {
        Some(previous) => heartbeat.ts_ms.saturating_sub(previous),
        None => heartbeat.uptime_ms.min(i64::MAX as u64) as i64,
    };
    if elapsed_ms <= 0 {
        return Ok(0.0);
    }
    let Some((mut limits, backend)) = task_limits_in(tx, &target.task_id)? else {
        return Ok(0.0);
    };
    // Of a `--gpu` list, the type the launch got is what runs (and is billed).
    if let Some(chosen) = gpu_chosen_in(tx, &target.task_id)? {
        limits.gpu = Some(chosen);
    }
    let resources = budget::requested_resources(&limits, &backend, config);
    let amount = budget::heartbeat_charge_usd(
        &resources,
        elapsed_ms,
        heartbeat.cpu_percent,
        heartbeat.memory_bytes,
        &config.rates,
    );
    if amount <= 0.0 {
        return Ok(0.0);
    }
    charge_compute_in(
        tx,
        target,
        heartbeat.ts_ms,
        amount,
        elapsed_ms as f64 / 1000.0,
        &serde_json::json!({
            "cpu_percent": heartbeat.cpu_percent,
            "memory_bytes": heartbeat.memory_bytes,
            "interval_ms": heartbeat.interval_ms,
        }),
    )?;
    Ok(amount)
}
