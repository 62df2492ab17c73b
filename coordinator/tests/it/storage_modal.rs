//! Storage charges through the real Modal bridge (`images/modal/parhelia_bridge.py`)
//! and the stand-in `modal` package (`tests/modal_standin/`): a session's files
//! on the volume are measured by listing it, charged by size × time at the
//! rate table's price, and once `task delete` removes them the charge stops.

use std::path::Path;

use parhelia::backend::modal::ModalBackend;
use parhelia::config::Config;
use parhelia::db::{Db, NewLaunch, SpendScope};
use parhelia::ids::SessionSecret;
use parhelia::plan::AgentSettings;
use parhelia::storage;

const DAY_MS: i64 = 86_400_000;

async fn stand_in_modal(root: &Path) -> ModalBackend {
    let standin = root.join("modal-standin");
    std::fs::create_dir_all(&standin).unwrap();
    let mut config = Config::defaults().modal;
    config.bridge_pythonpath = Some(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/modal_standin")
            .display()
            .to_string(),
    );
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let modal = ModalBackend::new(
        state,
        "coord-5707a6e0".into(),
        config,
        AgentSettings::default(),
    )
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
    modal
}

#[tokio::test]
async fn a_modal_sessions_volume_data_is_charged_until_it_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let modal = stand_in_modal(tmp.path()).await;
    let db = Db::open(&tmp.path().join("p.db")).unwrap();
    db.insert_launch(&NewLaunch {
        task_id: "task-5707a6e1".into(),
        session_id: "sess-5707a6e1".into(),
        container_id: "ctr-5707a6e1".into(),
        claude_session_id: "uuid".into(),
        prompt: "p".into(),
        task_type: "generic".into(),
        backend: "modal".into(),
        workspace: None,
        model: None,
        max_turns: None,
        mode: "headless".into(),
        secret: SessionSecret::from_stored("s3cret".into()),
        workspace_dir: "/w".into(),
        volume_dir: "/vol/sessions/sess-5707a6e1".into(),
    })
    .unwrap();

    // What the agent would have written: a journal and a checkpoint layer
    // (3 MiB in all), and another session's file that is not this one's.
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let journal = files.join("journal");
    let layer = files.join("layer");
    let other = files.join("other");
    std::fs::write(&journal, vec![b'j'; 1 << 20]).unwrap();
    std::fs::write(&layer, vec![b'l'; 2 << 20]).unwrap();
    std::fs::write(&other, vec![b'o'; 5 << 20]).unwrap();
    modal
        .put_files(&[
            (
                journal,
                "sessions/sess-5707a6e1/containers/ctr-5707a6e1/journal.jsonl".into(),
            ),
            (
                layer,
                "sessions/sess-5707a6e1/checkpoints/layers/ab.tar.zst".into(),
            ),
            (other, "sessions/sess-5707a6e10/journal.jsonl".into()),
        ])
        .await
        .unwrap();
    use storage::VolumeSizes;
    assert_eq!(
        modal.session_bytes("sess-5707a6e1").await.unwrap(),
        3 << 20,
        "only the session's own directory is measured"
    );

    let rate = Config::defaults().rates.storage_gib_usd_per_month;
    assert!(storage::due(&db).unwrap());
    let t0 = db.active_storage_meters().unwrap()[0].started_at_ms;
    // First pass: measured, nothing held before it was seen.
    let first = storage::meter(&db, &modal, rate, t0 + DAY_MS)
        .await
        .unwrap();
    assert_eq!((first.measured, first.charged_usd), (1, 0.0));
    // 3 MiB held for 30 days at the table's price.
    let second = storage::meter(&db, &modal, rate, t0 + 31 * DAY_MS)
        .await
        .unwrap();
    let expected = 3.0 / 1024.0 * rate;
    assert!(
        (second.charged_usd - expected).abs() < 1e-15,
        "{second:?} vs {expected}"
    );

    // `task delete`'s removal: the directory leaves the volume.
    assert!(modal.remove_session_data("sess-5707a6e1").await.unwrap());
    assert_eq!(modal.session_bytes("sess-5707a6e1").await.unwrap(), 0);
    assert_eq!(
        modal.session_bytes("sess-5707a6e10").await.unwrap(),
        5 << 20,
        "another session's data stays"
    );
    storage::data_deleted(&db, "sess-5707a6e1", rate, t0 + 46 * DAY_MS).unwrap();
    let after = storage::meter(&db, &modal, rate, t0 + 90 * DAY_MS)
        .await
        .unwrap();
    assert!(after.is_empty(), "{after:?}");
    let spend = db.spend(SpendScope::Task("task-5707a6e1")).unwrap();
    // 30 days + the 15 days up to the deletion, at 3 MiB.
    let total = 3.0 / 1024.0 * rate * 1.5;
    assert!((spend.storage_usd - total).abs() < 1e-15, "{spend:?}");
    assert_eq!(spend.cost_usd, spend.storage_usd);
}
