//! The backend contract: what every [`Backend`] must do, run against each.
//! `local` runs the agent as a local process; `modal` runs it through the real
//! bridge (`images/modal/parhelia_bridge.py`) and the stand-in `modal`
//! package (`tests/modal_standin/`), whose sandboxes are local processes.
//! Both run the real agent, tmux and Claude Code against the scripted model.
//!
//! The contract: launch; list finds the container by our label/tags only
//! (another coordinator's backend does not see it, and the reconcile step
//! calls a labelled container nobody recorded an orphan); the endpoint
//! answers with the session secret; the checkpoint store can be read back;
//! terminate ends it (the agent journals an interrupted session, which the
//! journal read from the volume shows); resume restores a checkpoint on a
//! fresh container and continues the conversation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parhelia::agent_client::{AuthedAgentClient, connect_agent_with_roots};
use parhelia::backend::isolation::Isolation;
use parhelia::backend::local::LocalBackend;
use parhelia::backend::modal::ModalBackend;
use parhelia::backend::{Backend, LaunchRequest, Resources};
use parhelia::config::Config;
use parhelia::ids::SessionSecret;
use parhelia::plan::{AgentSettings, BackendKind, LaunchIds, SessionRequest};
use parhelia::reconcile::{Action, Intended, Observation, reconcile};
use parhelia_proto::event::Kind;
use parhelia_proto::{Event, GetInfoRequest, SessionOutcome};
use parhelia_testkit::harness::bin_dir;
use parhelia_testkit::model_stand_in::RequestKind;
use parhelia_testkit::{Script, StandIn, ToolCall, Turn};

struct World {
    dir: tempfile::TempDir,
    stand_in: StandIn,
    claude: PathBuf,
}

impl World {
    fn new() -> World {
        for b in ["parhelia", "parhelia-agent"] {
            assert!(
                bin_dir().join(b).exists(),
                "{b} is not built: run `cargo build --workspace --bins` first (scripts/test does)"
            );
        }
        let stand_in = StandIn::start(Script::new([
            Turn::tool_use([ToolCall::write("made.txt", "made by the session\n")]),
            // Risky: checkpointed before it runs; then it hangs until stopped.
            Turn::tool_use([ToolCall::bash("rm -rf scratch; tail -f /dev/null")]),
            // After the resume:
            Turn::tool_use([ToolCall::bash("cat made.txt > seen-after-resume.txt")]),
            Turn::text("Resumed and done."),
        ]))
        .expect("model stand-in");
        let claude = parhelia_testkit::claude_code::claude_bin().unwrap_or_else(|e| panic!("{e}"));
        World {
            dir: tempfile::tempdir().unwrap(),
            stand_in,
            claude,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> BTreeMap<String, String> {
        let path = format!(
            "{}:{}",
            self.claude.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        [
            ("PATH", path.as_str()),
            ("HOME", std::env::var("HOME").as_deref().unwrap_or("/root")),
            ("ANTHROPIC_BASE_URL", self.stand_in.base_url()),
            ("ANTHROPIC_API_KEY", "test-key-not-a-secret"),
            ("CLAUDE_CODE_MAX_RETRIES", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn local(&self, coordinator_id: &str) -> Arc<dyn Backend> {
        let state = self.root().join(format!("state-{coordinator_id}"));
        std::fs::create_dir_all(&state).unwrap();
        Arc::new(
            LocalBackend::new(state, coordinator_id.into(), bin_dir().join("parhelia"))
                .with_agent_settings(settings()),
        )
    }

    async fn modal(&self, coordinator_id: &str) -> Arc<dyn Backend> {
        let standin = self.root().join("modal-standin");
        std::fs::create_dir_all(standin.join("secrets")).unwrap();
        std::fs::write(
            standin.join("secrets/anthropic-api-key.json"),
            r#"{"ANTHROPIC_API_KEY": "test-key-not-a-secret"}"#,
        )
        .unwrap();
        let ctr = self.root().join("ctr");
        std::fs::create_dir_all(ctr.join("home")).unwrap();
        let agent = bin_dir().join("parhelia-agent");
        let mut config = Config::defaults().modal;
        config.bridge_pythonpath = Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/modal_standin")
                .display()
                .to_string(),
        );
        config.volume_mount = ctr.join("vol");
        config.container_home = ctr.join("home");
        config.claude_path = self.claude.clone();
        config.agent_path = agent.clone();
        config.agent_bin = Some(agent);
        config.agent_port = 0;
        config.run_as_user = "root".into();
        let state = self.root().join(format!("state-{coordinator_id}"));
        std::fs::create_dir_all(&state).unwrap();
        let modal = ModalBackend::new(state, coordinator_id.into(), config, settings())
            .with_bridge_env(vec![
                (
                    "PARHELIA_MODAL_STANDIN_ROOT".into(),
                    standin.display().to_string(),
                ),
                ("MODAL_TOKEN_ID".into(), "ak-standin".into()),
                ("MODAL_TOKEN_SECRET".into(), "as-standin".into()),
            ]);
        modal
            .call(
                "volume.ensure",
                serde_json::json!({"volume": "parhelia-data", "create": true}),
            )
            .await
            .expect("the stand-in volume");
        Arc::new(modal)
    }
}

fn settings() -> AgentSettings {
    AgentSettings {
        heartbeat_interval_ms: 200,
        stop_grace_ms: 3_000,
        linger_after_finish_ms: 60_000,
        ..AgentSettings::default()
    }
}

/// An id of `prefix` no other run on this machine uses: two runs of this test at once
/// (several checkouts) with fixed ids listed, joined and stopped each other's
/// containers, and a failed run's leftovers broke the next.
fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn ids(session_id: &str, container_id: &str, claude_session_id: &str) -> LaunchIds {
    LaunchIds {
        task_id: fresh("task"),
        session_id: session_id.into(),
        container_id: container_id.into(),
        claude_session_id: claude_session_id.into(),
    }
}

fn request(
    world: &World,
    kind: BackendKind,
    ids: LaunchIds,
    session: SessionRequest,
    workspace: Option<PathBuf>,
    secret: &SessionSecret,
) -> LaunchRequest {
    LaunchRequest {
        ids,
        session,
        workspace_source: workspace,
        copy_limits: parhelia::backend::workspace_copy::CopyLimits::UNLIMITED,
        workspace_progress: None,
        claude_bin: world.claude.clone(),
        agent_bin: Some(bin_dir().join("parhelia-agent")),
        env: world.env(),
        secret: secret.clone(),
        secrets: Vec::new(),
        region: None,
        on_gpu: None,
        isolation: Isolation::None,
        backend: kind,
        resources: Resources::default(),
        user_config: false,
        agent_settings: None,
    }
}

/// Connects to an agent as the coordinator does, trusting the stand-in's CA (under
/// the world's root, once a Modal tunnel made it) as `PARHELIA_TLS_CA_FILE` makes the
/// coordinator trust it in the e2e tests.
async fn connect(
    root: &Path,
    uri: &str,
    secret: &SessionSecret,
) -> anyhow::Result<AuthedAgentClient> {
    let ca = std::fs::read(root.join("modal-standin/tls/ca.pem")).ok();
    connect_agent_with_roots(uri, secret, ca.as_deref()).await
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn journal(backend: &dyn Backend, container_id: &str, session_id: &str) -> Vec<Event> {
    backend
        .read_journal(container_id, session_id, 0)
        .await
        .expect("read the journal")
}

fn finished(events: &[Event]) -> Option<SessionOutcome> {
    events.iter().find_map(|e| match &e.kind {
        Some(Kind::SessionFinished(f)) => Some(f.outcome()),
        _ => None,
    })
}

async fn contract(kind: BackendKind) {
    let world = World::new();
    let (ours, theirs) = (fresh("coord"), fresh("coord"));
    let (backend, stranger) = match kind {
        BackendKind::Local => (world.local(&ours), world.local(&theirs)),
        BackendKind::Modal => (world.modal(&ours).await, world.modal(&theirs).await),
    };
    let secret = SessionSecret::generate();
    let claude_session = uuid::Uuid::new_v4().to_string();
    let session_id = fresh("sess");
    let session_id = session_id.as_str();
    let source = world.root().join("source");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("seed.txt"), "from the user's tree\n").unwrap();

    // Launch.
    let first = ids(session_id, &fresh("ctr"), &claude_session);
    let session = SessionRequest {
        prompt: "Make a file, then wait".into(),
        model: None,
        max_turns: None,
        interactive: false,
        resume: false,
        restore_checkpoint: None,
        max_budget_usd: None,
        prior_cost_usd: None,
        charged_elsewhere: Vec::new(),
    };
    let handle = backend
        .launch(&request(
            &world,
            kind,
            first.clone(),
            session,
            Some(source.clone()),
            &secret,
        ))
        .await
        .expect("launch");
    assert_eq!(handle.container_id, first.container_id);

    // List: ours, by our label or tags, with the session; never another
    // coordinator's.
    let listed = wait_for("the container listed", Duration::from_secs(60), || async {
        let list = backend.list().await.expect("list");
        list.into_iter()
            .find(|c| c.container_id == first.container_id)
    })
    .await;
    assert_eq!(listed.session_id, session_id);
    assert_eq!(listed.coordinator_label, ours);
    let theirs = stranger.list().await.expect("the other coordinator lists");
    assert!(
        theirs.iter().all(|c| c.container_id != first.container_id),
        "another coordinator's backend saw our container: {theirs:?}"
    );

    // Orphan detection: a labelled container nobody recorded is an orphan.
    let observed = Observation::listed(backend.list().await.unwrap());
    let policy = Config::defaults().policy(&ours);
    let actions = reconcile(&Intended::default(), &observed, now_ms(), &policy);
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::ReportOrphan { container_id, known: false, .. } if *container_id == first.container_id)),
        "{actions:?}"
    );

    // Endpoint: the agent answers, with the session secret only.
    let endpoint = backend
        .endpoint(&first.container_id)
        .await
        .expect("endpoint");
    if kind == BackendKind::Modal {
        // A Modal tunnel is TLS, and its certificate is checked: without the stand-in's
        // CA among the roots, the connection is refused.
        assert!(endpoint.uri.starts_with("https://"), "{}", endpoint.uri);
        let untrusted = connect_agent_with_roots(&endpoint.uri, &secret, None).await;
        assert!(
            untrusted.is_err(),
            "a tunnel whose certificate nobody vouches for was trusted"
        );
    }
    let info = wait_for("the agent answering", Duration::from_secs(60), || {
        let (uri, secret) = (endpoint.uri.clone(), secret.clone());
        let root = world.root().to_path_buf();
        async move {
            let mut client = connect(&root, &uri, &secret).await.ok()?;
            client
                .get_info(GetInfoRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert_eq!(info.session_id, session_id);
    assert_eq!(info.container_id, first.container_id);
    let wrong = SessionSecret::generate();
    let mut intruder = connect(world.root(), &endpoint.uri, &wrong)
        .await
        .expect("connect");
    assert!(
        intruder.get_info(GetInfoRequest {}).await.is_err(),
        "the agent answered a wrong secret"
    );

    // The store reads back: the pre-tool checkpoint holds the user's file
    // and the session's.
    let checkpoint = wait_for(
        "a checkpoint with made.txt",
        Duration::from_secs(90),
        || async {
            let dir = backend
                .store_dir(session_id, &handle.volume_dir)
                .await
                .ok()??;
            let store = parhelia_checkpoint::Store::open(&dir).ok()?;
            let latest = store.latest().ok()??;
            let files: Vec<String> = store
                .entries(&latest.id, "workspace")
                .ok()?
                .iter()
                .map(|e| e.path.to_string_lossy().into_owned())
                .collect();
            (files.iter().any(|f| f == "made.txt") && files.iter().any(|f| f == "seed.txt"))
                .then_some(latest.id.to_string())
        },
    )
    .await;

    // Terminate: the agent journals an interrupted session and goes away.
    backend
        .terminate(&first.container_id)
        .await
        .expect("terminate");
    wait_for("the container gone", Duration::from_secs(60), || async {
        let list = backend.list().await.ok()?;
        list.iter()
            .all(|c| c.container_id != first.container_id)
            .then_some(())
    })
    .await;
    let events = wait_for("the journal's end", Duration::from_secs(30), || async {
        let events = journal(backend.as_ref(), &first.container_id, session_id).await;
        finished(&events).map(|_| events)
    })
    .await;
    assert_eq!(
        finished(&events),
        Some(SessionOutcome::Interrupted),
        "terminate is SIGTERM: the session is resumable"
    );
    // Terminating what is gone is a no-op.
    backend
        .terminate(&first.container_id)
        .await
        .expect("terminate again");

    // Resume on a fresh container: the checkpoint is restored and the same
    // conversation continues.
    let requests_before = world.stand_in.requests().len();
    let second = ids(session_id, &fresh("ctr"), &claude_session);
    let resumed = SessionRequest {
        prompt: "Please continue.".into(),
        model: None,
        max_turns: None,
        interactive: false,
        resume: true,
        restore_checkpoint: Some(checkpoint.clone()),
        max_budget_usd: None,
        prior_cost_usd: None,
        charged_elsewhere: Vec::new(),
    };
    let handle2 = backend
        .launch(&request(
            &world,
            kind,
            second.clone(),
            resumed,
            None,
            &secret,
        ))
        .await
        .expect("resume launch");
    let events = wait_for(
        "the resumed session's end",
        Duration::from_secs(120),
        || async {
            let events = journal(backend.as_ref(), &second.container_id, session_id).await;
            finished(&events).map(|_| events)
        },
    )
    .await;
    assert_eq!(
        finished(&events),
        Some(SessionOutcome::Succeeded),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| matches!(&e.kind,
            Some(Kind::CheckpointRestored(r)) if r.checkpoint_id == checkpoint)),
        "no checkpoint_restored event"
    );
    assert_eq!(
        std::fs::read_to_string(handle2.workspace_dir.join("seen-after-resume.txt")).unwrap(),
        "made by the session\n"
    );
    let first_resumed = world.stand_in.requests()[requests_before..]
        .iter()
        .find(|r| r.kind == RequestKind::Turn)
        .cloned()
        .expect("the resumed session called the model");
    assert!(
        first_resumed.message_count > 3,
        "the resumed request carried only {} messages",
        first_resumed.message_count
    );
    backend.terminate(&second.container_id).await.unwrap();
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_backend_keeps_the_contract() {
    contract(BackendKind::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modal_backend_keeps_the_contract_against_the_stand_in() {
    contract(BackendKind::Modal).await;
}
