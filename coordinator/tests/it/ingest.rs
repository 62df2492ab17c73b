//! Event ingestion against an in-process fake agent: real tonic gRPC over
//! real TCP on 127.0.0.1, a real SQLite file.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use parhelia::backend::{Backend, ContainerHandle, Endpoint, LaunchRequest, ObservedContainer};
use parhelia::db::{ContainerRef, ContainerState, Db, NewLaunch, TaskUpdate};
use parhelia::ids::SessionSecret;
use parhelia::ingest::{FollowOutcome, IngestContext, IngestSettings, follow_container};
use parhelia::task_state::TaskStatus;
use parhelia_proto::agent_server::{Agent, AgentServer};
use parhelia_proto::{
    AgentInfo, AssistantText, Event, GetInfoRequest, Heartbeat, SendInputRequest,
    SendInputResponse, SessionFinished, SessionOutcome, StopRequest, StopResponse,
    StreamEventsRequest, StreamEventsResponse, ToolCall, TurnResult, event::Kind,
    stream_events_response::Item,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

const SECRET: &str = "0123456789abcdef-test-secret";
const LAST_SEQ: u64 = 8;

/// What the fake agent saw.
#[derive(Default, Debug)]
struct Seen {
    auth: Vec<Option<String>>,
    from_seqs: Vec<u64>,
    stops: Vec<String>,
}

#[derive(Clone)]
struct FakeAgent {
    seen: Arc<Mutex<Seen>>,
    /// When set, the agent finishes with this outcome.
    outcome: SessionOutcome,
}

fn event(seq: u64, outcome: SessionOutcome) -> Event {
    let kind = match seq {
        1 => Kind::AssistantText(AssistantText {
            message_id: "m1".into(),
            text: "I'll write hello.txt.".into(),
            ..Default::default()
        }),
        2 => Kind::ToolCall(ToolCall {
            tool_use_id: "t1".into(),
            name: "Write".into(),
            input_json: r#"{"file_path":"hello.txt","content":"hi\n"}"#.into(),
            ..Default::default()
        }),
        s if s == LAST_SEQ - 1 => Kind::TurnResult(TurnResult {
            subtype: "success".into(),
            result: "Wrote hello.txt".into(),
            num_turns: 2,
            session_cost_usd: 0.0421,
            ..Default::default()
        }),
        s if s == LAST_SEQ => Kind::SessionFinished(SessionFinished {
            outcome: outcome as i32,
            result: "Wrote hello.txt".into(),
            session_cost_usd: 0.0421,
            error_code: if outcome == SessionOutcome::Failed {
                "E505".into()
            } else {
                String::new()
            },
            error_message: if outcome == SessionOutcome::Failed {
                "the model API failed".into()
            } else {
                String::new()
            },
            ..Default::default()
        }),
        s => Kind::AssistantText(AssistantText {
            message_id: format!("m{s}"),
            text: format!("step {s}"),
            ..Default::default()
        }),
    };
    Event {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64,
        kind: Some(kind),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for FakeAgent {
    type StreamEventsStream = EventStream;
    type AttachStream =
        Pin<Box<dyn Stream<Item = Result<parhelia_proto::AttachResponse, Status>> + Send>>;
    type WatchRestoreStream =
        Pin<Box<dyn Stream<Item = Result<parhelia_proto::RestoreProgressUpdate, Status>> + Send>>;

    async fn watch_restore(
        &self,
        _: Request<parhelia_proto::WatchRestoreRequest>,
    ) -> Result<Response<Self::WatchRestoreStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn attach(
        &self,
        _: Request<tonic::Streaming<parhelia_proto::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn capture_screen(
        &self,
        _: Request<parhelia_proto::CaptureScreenRequest>,
    ) -> Result<Response<parhelia_proto::CaptureScreenResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<AgentInfo>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn stream_events(
        &self,
        request: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let auth = request
            .metadata()
            .get(parhelia_proto::AUTH_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let call = {
            let mut seen = self.seen.lock().unwrap();
            seen.auth.push(auth.clone());
            seen.from_seqs.push(request.get_ref().from_seq);
            seen.from_seqs.len()
        };
        if auth.as_deref() != Some(parhelia_proto::bearer(SECRET).as_str()) {
            return Err(Status::unauthenticated("wrong secret"));
        }
        let from = request.get_ref().from_seq.max(1);
        let outcome = self.outcome;
        let heartbeat = StreamEventsResponse {
            item: Some(Item::Heartbeat(Heartbeat {
                ts_ms: 1_700_000_000_500,
                cpu_percent: 12.5,
                memory_bytes: 300 << 20,
                workspace_disk_bytes: 4096,
                status: parhelia_proto::SessionStatus::Busy as i32,
                ..Default::default()
            })),
        };
        let ev = |seq| {
            Ok(StreamEventsResponse {
                item: Some(Item::Event(event(seq, outcome))),
            })
        };
        let stream: EventStream = if call == 1 {
            // First connection: three events and a heartbeat, then the
            // stream breaks.
            let mut items: Vec<Result<StreamEventsResponse, Status>> = (from..=3).map(ev).collect();
            items.insert(items.len().min(1), Ok(heartbeat));
            items.push(Err(Status::unavailable("connection dropped")));
            Box::pin(futures::stream::iter(items))
        } else {
            // Later connections misbehave on purpose and replay two events
            // before the one asked for; the coordinator must not store them
            // twice. Then everything up to SessionFinished, and the stream
            // stays open (follow mode).
            let items: Vec<_> = (from.saturating_sub(2).max(1)..=LAST_SEQ).map(ev).collect();
            Box::pin(futures::StreamExt::chain(
                futures::stream::iter(items),
                futures::stream::pending(),
            ))
        };
        Ok(Response::new(stream))
    }

    async fn send_input(
        &self,
        _: Request<SendInputRequest>,
    ) -> Result<Response<SendInputResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn create_checkpoint(
        &self,
        _: Request<parhelia_proto::CreateCheckpointRequest>,
    ) -> Result<Response<parhelia_proto::CreateCheckpointResponse>, Status> {
        Err(Status::unimplemented("not needed"))
    }

    async fn stop(&self, request: Request<StopRequest>) -> Result<Response<StopResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .stops
            .push(request.into_inner().reason);
        Ok(Response::new(StopResponse {}))
    }
}

/// A backend whose only container is the fake agent.
struct FakeBackend {
    uri: String,
    container_id: String,
    alive: bool,
    /// What the container's journal on the volume holds.
    journal: Vec<Event>,
}

#[async_trait]
impl Backend for FakeBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, _: &LaunchRequest) -> anyhow::Result<ContainerHandle> {
        anyhow::bail!("not used")
    }

    async fn list(&self) -> anyhow::Result<Vec<ObservedContainer>> {
        Ok(if self.alive {
            vec![ObservedContainer {
                container_id: self.container_id.clone(),
                session_id: String::new(),
                pid: None,
                endpoint: Some(self.uri.clone()),
                coordinator_label: "coord-test".into(),
            }]
        } else {
            Vec::new()
        })
    }

    async fn terminate(&self, _: &str) -> anyhow::Result<()> {
        Ok(())
    }

    async fn read_journal(&self, _: &str, _: &str, from_seq: u64) -> anyhow::Result<Vec<Event>> {
        Ok(self
            .journal
            .iter()
            .filter(|e| e.seq >= from_seq)
            .cloned()
            .collect())
    }

    async fn endpoint(&self, _: &str) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            uri: self.uri.clone(),
            pid: None,
        })
    }
}

async fn start_fake_agent(outcome: SessionOutcome) -> (String, Arc<Mutex<Seen>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let agent = FakeAgent {
        seen: Arc::clone(&seen),
        outcome,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), seen)
}

fn record_task(db: &Db, secret: &str) -> ContainerRef {
    let target = ContainerRef {
        task_id: "task-0000000a".into(),
        session_id: "sess-0000000b".into(),
        container_id: "ctr-0000000c".into(),
    };
    db.insert_launch(&NewLaunch {
        task_id: target.task_id.clone(),
        session_id: target.session_id.clone(),
        container_id: target.container_id.clone(),
        claude_session_id: uuid::Uuid::new_v4().to_string(),
        prompt: "Add a hello.txt that says hi".into(),
        task_type: "generic".into(),
        backend: "local".into(),
        workspace: None,
        model: None,
        max_turns: None,
        mode: "headless".into(),
        secret: SessionSecret::from_stored(secret.into()),
        workspace_dir: "/w".into(),
        volume_dir: "/v".into(),
    })
    .unwrap();
    db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
        .unwrap();
    target
}

fn context(db: &Arc<Db>, backend: FakeBackend) -> (IngestContext, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let ctx = IngestContext {
        db: Arc::clone(db),
        backend: Arc::new(backend),
        shutdown: rx,
        settings: IngestSettings {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            failures_before_liveness_check: 3,
        },
        signals: Default::default(),
        config: Arc::new(parhelia::config::Config::defaults()),
    };
    (ctx, tx)
}

#[tokio::test]
async fn ingestion_authenticates_resumes_without_duplicates_and_completes_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    let (uri, seen) = start_fake_agent(SessionOutcome::Succeeded).await;
    let (ctx, _shutdown) = context(
        &db,
        FakeBackend {
            uri,
            container_id: target.container_id.clone(),
            alive: true,
            journal: Vec::new(),
        },
    );

    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        follow_container(ctx, target.clone()),
    )
    .await
    .expect("ingestion did not finish");
    assert_eq!(outcome, FollowOutcome::SessionFinished);

    {
        let seen = seen.lock().unwrap();
        let bearer = parhelia_proto::bearer(SECRET);
        assert!(
            seen.auth
                .iter()
                .all(|a| a.as_deref() == Some(bearer.as_str())),
            "{:?}",
            seen.auth
        );
        assert_eq!(
            seen.from_seqs,
            vec![1, 4],
            "resumes after the last stored event"
        );
        assert_eq!(seen.stops, vec!["session finished".to_string()]);
    }

    // Gap-free, in order, once each.
    assert_eq!(
        db.container_seqs(&target.container_id).unwrap(),
        (1..=LAST_SEQ).collect::<Vec<_>>()
    );
    assert!(db.heartbeat_count(&target.container_id).unwrap() >= 1);

    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert!(
        (task.spend.model_usd - 0.0421).abs() < 1e-12,
        "{:?}",
        task.spend
    );
    assert_eq!(
        task.spend.cost_usd,
        task.spend.compute_usd + task.spend.model_usd + task.spend.storage_usd
    );
    assert_eq!(task.result.as_deref(), Some("Wrote hello.txt"));
    assert_eq!(task.error_code, None);
    assert!(task.finished_at_ms.is_some());
    let container = db.get_container(&target.container_id).unwrap().unwrap();
    assert_eq!(container.state, ContainerState::Terminated);
    assert!(container.last_heartbeat_ms.is_some());

    // `task watch` reads it all back from the database and ends.
    let mut lines = Vec::new();
    let watched = parhelia::watch::watch_task(&db, &target.task_id, |l| lines.push(l.to_string()))
        .await
        .unwrap();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("claude   I'll write hello.txt.")
    );
    assert_eq!(lines[1], "tool     Write hello.txt (3 bytes)");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("finished succeeded · $0.0421")
    );
    assert_eq!(lines.len() as u64, LAST_SEQ);
    assert!(watched.outcome().is_ok());
    assert!(
        watched.summary().contains("task-0000000a completed"),
        "{}",
        watched.summary()
    );
}

#[tokio::test]
async fn failed_session_fails_the_task_with_its_code() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    let (uri, _seen) = start_fake_agent(SessionOutcome::Failed).await;
    let (ctx, _shutdown) = context(
        &db,
        FakeBackend {
            uri,
            container_id: target.container_id.clone(),
            alive: true,
            journal: Vec::new(),
        },
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        follow_container(ctx, target.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, FollowOutcome::SessionFinished);
    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error_code.as_deref(), Some("E505"));
    assert_eq!(task.error_message.as_deref(), Some("the model API failed"));
    let watched = parhelia::watch::watch_task(&db, &target.task_id, |_| {})
        .await
        .unwrap();
    let err = watched.outcome().unwrap_err();
    assert_eq!(err.code.code, "E505");
    assert_eq!(err.code.exit_status(), 6);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_fails_the_task() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, "not-the-agents-secret");
    let (uri, seen) = start_fake_agent(SessionOutcome::Succeeded).await;
    let (ctx, _shutdown) = context(
        &db,
        FakeBackend {
            uri,
            container_id: target.container_id.clone(),
            alive: true,
            journal: Vec::new(),
        },
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        follow_container(ctx, target.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, FollowOutcome::Lost);
    assert_eq!(
        seen.lock().unwrap().auth,
        vec![Some(parhelia_proto::bearer("not-the-agents-secret"))]
    );
    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error_code.as_deref(), Some("E402"));
    assert!(db.container_seqs(&target.container_id).unwrap().is_empty());
}

/// A service over `db` and `backend` with a stale threshold of `stale_s`.
fn service(
    tmp: &std::path::Path,
    db: &Arc<Db>,
    backend: FakeBackend,
    stale_s: f64,
) -> parhelia::service::CoordinatorService {
    let mut config = parhelia::config::Config::defaults();
    config.reconciler.stale_threshold_seconds = stale_s;
    let state = parhelia::state_dir::StateDir::new(
        tmp.to_path_buf(),
        parhelia::state_dir::StateDirSource::Explicit,
    );
    parhelia::service::CoordinatorService::with_config(
        state,
        Arc::clone(db),
        Arc::new(backend),
        config,
    )
}

fn manual() -> parhelia::reconciler::PassOptions {
    parhelia::reconciler::PassOptions {
        trigger: "manual".into(),
        ..Default::default()
    }
}

/// The follower of a vanished agent stores what its journal holds and
/// leaves the verdict to the reconciler, which needs the heartbeats to be
/// stale too: not before, and then exactly once.
#[tokio::test]
async fn a_vanished_agent_is_lost_only_once_its_heartbeats_are_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    db.set_container_starting(&target.container_id, None)
        .unwrap();
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let backend = || FakeBackend {
        uri: format!("http://{closed}"),
        container_id: target.container_id.clone(),
        alive: false,
        // Journaled but never streamed: the first three events.
        journal: (1..=3)
            .map(|s| event(s, SessionOutcome::Succeeded))
            .collect(),
    };
    let (ctx, _shutdown) = context(&db, backend());
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        follow_container(ctx, target.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, FollowOutcome::AgentGone);
    assert_eq!(
        db.container_seqs(&target.container_id).unwrap(),
        vec![1, 2, 3]
    );
    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Running,
        "the follower decides nothing"
    );

    // Not listed, but heard from recently (its start): not lost.
    let patient = service(tmp.path(), &db, backend(), 300.0);
    let report = patient.reconcile(manual()).await.unwrap();
    assert!(
        report
            .actions
            .iter()
            .all(|a| a.action.name() != "mark_lost"),
        "{report:#?}"
    );
    assert_eq!(report.drift.missing, vec![target.container_id.clone()]);

    // With a short threshold, once the silence exceeds it: lost.
    let strict = service(tmp.path(), &db, backend(), 0.2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let lost = loop {
        let report = strict.reconcile(manual()).await.unwrap();
        if let Some(a) = report
            .actions
            .iter()
            .find(|a| a.action.name() == "mark_lost")
        {
            break a.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lost.result, "done");
    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Interrupted);
    assert_eq!(task.error_code.as_deref(), Some("E503"));
    let container = db.get_container(&target.container_id).unwrap().unwrap();
    assert_eq!(container.state, ContainerState::Lost);
    assert_eq!(
        container.health,
        Some(parhelia::container_state::Health::Dead)
    );
    let session = db.get_session(&target.session_id).unwrap().unwrap();
    assert_eq!(session.outcome.as_deref(), Some("interrupted"));
    let lost_events = db
        .query_events(
            &parhelia::event_filter::EventFilter {
                types: vec!["container_lost".into()],
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(lost_events.len(), 1);
    assert_eq!(
        lost_events[0].task_id.as_deref(),
        Some(target.task_id.as_str())
    );
    // The real adapter is idempotent too: the next pass has nothing to do.
    let again = strict.reconcile(manual()).await.unwrap();
    assert!(again.actions.is_empty(), "{again:#?}");
}

/// An agent that journaled the session's end and exited before streaming
/// it: the follower reads the end from the journal and the task completes,
/// every event stored once.
#[tokio::test]
async fn a_finished_session_is_read_from_the_journal_of_a_gone_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    db.record_event(&target, &event(1, SessionOutcome::Succeeded))
        .unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (ctx, _shutdown) = context(
        &db,
        FakeBackend {
            uri: format!("http://{closed}"),
            container_id: target.container_id.clone(),
            alive: false,
            journal: (1..=LAST_SEQ)
                .map(|s| event(s, SessionOutcome::Succeeded))
                .collect(),
        },
    );
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        follow_container(ctx, target.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome, FollowOutcome::SessionFinished);
    assert_eq!(
        db.container_seqs(&target.container_id).unwrap(),
        (1..=LAST_SEQ).collect::<Vec<_>>()
    );
    let task = db.get_task(&target.task_id).unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(
        db.get_container(&target.container_id)
            .unwrap()
            .unwrap()
            .state,
        ContainerState::Terminated
    );
}

/// Issue 12 item 6: a gone agent's journal on the volume has holes (lines
/// cut out) and ends before what the agent announced: every hole is a
/// recorded gap (E515), the events around them are stored, and the stream
/// position moves past them.
#[tokio::test]
async fn holes_in_a_gone_agents_journal_are_recorded_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    db.record_event(&target, &event(1, SessionOutcome::Succeeded))
        .unwrap();
    db.record_heartbeat(
        &target.container_id,
        &Heartbeat {
            ts_ms: 1,
            last_seq: 9,
            ..Default::default()
        },
    )
    .unwrap();
    let backend = FakeBackend {
        uri: "http://127.0.0.1:9".into(),
        container_id: target.container_id.clone(),
        alive: false,
        // 2-3 cut out, 6 repeated, nothing after 6; the agent said 9.
        journal: [1, 4, 5, 6, 6]
            .into_iter()
            .map(|s| {
                let mut e = event(s, SessionOutcome::Succeeded);
                if matches!(
                    e.kind,
                    Some(parhelia_proto::event::Kind::SessionFinished(_))
                ) {
                    e.kind = None;
                }
                e
            })
            .collect(),
    };
    let caught = parhelia::ingest::catch_up_from_journal(&db, &backend, &target)
        .await
        .unwrap();
    assert_eq!(caught.ingested, 3);
    assert_eq!(caught.gaps, 2);
    assert!(!caught.finished);
    let gaps: Vec<(u64, u64)> = db
        .journal_gaps(&target.container_id)
        .unwrap()
        .into_iter()
        .map(|(from, to, source, _)| {
            assert_eq!(source, "volume");
            (from, to)
        })
        .collect();
    assert_eq!(gaps, vec![(2, 3), (7, 9)]);
    assert_eq!(db.resume_seq(&target.container_id).unwrap(), 9);
    // Read again: nothing new, nothing recorded twice.
    let again = parhelia::ingest::catch_up_from_journal(&db, &backend, &target)
        .await
        .unwrap();
    assert_eq!((again.ingested, again.gaps), (0, 0));
    assert_eq!(db.journal_gaps(&target.container_id).unwrap().len(), 2);
}

#[tokio::test]
async fn shutdown_stops_following_and_leaves_the_task_running() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (ctx, shutdown) = context(
        &db,
        FakeBackend {
            uri: format!("http://{closed}"),
            container_id: target.container_id.clone(),
            alive: true,
            journal: Vec::new(),
        },
    );
    let follower = tokio::spawn(follow_container(ctx, target.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.send_replace(true);
    let outcome = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, FollowOutcome::Shutdown);
    assert_eq!(
        db.get_task(&target.task_id).unwrap().unwrap().status,
        TaskStatus::Running
    );
}

/// A restarted coordinator re-attaches to containers whose task still runs
/// and resumes after the last event it had stored.
#[tokio::test]
async fn a_restarted_coordinator_reattaches_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&tmp.path().join("parhelia.db")).unwrap());
    let target = record_task(&db, SECRET);
    // What the previous coordinator stored before it went away.
    for seq in 1..=3 {
        db.record_event(&target, &event(seq, SessionOutcome::Succeeded))
            .unwrap();
    }
    let (uri, seen) = start_fake_agent(SessionOutcome::Succeeded).await;
    let backend = FakeBackend {
        uri,
        container_id: target.container_id.clone(),
        alive: true,
        journal: Vec::new(),
    };
    let state = parhelia::state_dir::StateDir::new(
        tmp.path().to_path_buf(),
        parhelia::state_dir::StateDirSource::Explicit,
    );
    let service =
        parhelia::daemon::CoordinatorService::new(state, Arc::clone(&db), Arc::new(backend));
    assert_eq!(service.reattach().await.unwrap(), 1);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while db.get_task(&target.task_id).unwrap().unwrap().status == TaskStatus::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.stop_followers().await;
    assert_eq!(seen.lock().unwrap().from_seqs.first(), Some(&4));
    assert_eq!(
        db.container_seqs(&target.container_id).unwrap(),
        (1..=LAST_SEQ).collect::<Vec<_>>()
    );
    assert_eq!(
        db.get_task(&target.task_id).unwrap().unwrap().status,
        TaskStatus::Completed
    );
    // Nothing is left to follow.
    assert_eq!(service.reattach().await.unwrap(), 0);
}
