//! The Modal operations behind `parhelia modal setup | health-check |
//! init-volume` and `parhelia config sync`, run inside the coordinator (which
//! owns the one bridge process). Each takes its typed request and returns its
//! typed report (`ModalOp` in `coordinator.proto`) that the fronts render; a
//! failed check is a coded error carrying the report so far.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use parhelia_proto::modal_op_request::Op;
use parhelia_proto::modal_op_response::Report;
use parhelia_proto::{
    ConfigSyncReport, ConfigSyncRequest, ConfigWithheld, ModalHealthReport, ModalInitVolumeReport,
    ModalOpRequest, ModalOpResponse, ModalSetupReport, ModalSetupStep,
};
use serde_json::json;

use crate::backend::modal::ModalBackend;
use crate::config_sync;
use crate::error::CodedError;
use crate::error_codes;
use crate::service::CoordinatorService;

/// Directories `init-volume` creates (each gets a README).
pub const VOLUME_DIRS: &[(&str, &str)] = &[
    (
        "sessions",
        "One directory per Parhelia session: journal/, checkpoints/, containers/.\n",
    ),
    (
        "config",
        "Claude Code configuration uploaded by `parhelia config sync` (never credentials).\n",
    ),
    ("images", "Reserved for image build artefacts.\n"),
];

/// The one entry point (`ModalOp`): the operation asked for, its report in
/// the same case. No operation is E100.
pub async fn run(service: &CoordinatorService, request: ModalOpRequest) -> Result<ModalOpResponse> {
    let op = request.op.ok_or_else(|| {
        CodedError::new(
            error_codes::INVALID_INPUT,
            "no modal operation given (setup, health_check, init_volume or config_sync)",
        )
    })?;
    let modal = service.modal_backend()?;
    let report = match op {
        Op::Setup(r) => Report::Setup(setup(&modal, r.force_build, &|_| {}).await?),
        Op::HealthCheck(_) => Report::HealthCheck(health_check(&modal).await?),
        Op::InitVolume(_) => Report::InitVolume(init_volume(&modal).await?),
        Op::ConfigSync(r) => Report::ConfigSync(config_sync(&modal, &r).await?),
    };
    Ok(ModalOpResponse {
        report: Some(report),
    })
}

/// A step of `modal setup`: its name, whether it passed, what it found.
fn step(name: &str, ok: bool, detail: impl Into<String>) -> ModalSetupStep {
    ModalSetupStep {
        step: name.to_string(),
        ok,
        detail: detail.into(),
    }
}

/// A failed step ends the report: the error carries the steps so far.
fn fail(mut steps: Vec<ModalSetupStep>, name: &str, err: CodedError) -> anyhow::Error {
    steps.push(step(name, false, err.message.clone()));
    CodedError::new(
        err.code,
        format!("{}\n{}", err.message, render_steps(&steps)),
    )
    .into()
}

/// Text of a setup report's steps.
pub fn render_steps(steps: &[ModalSetupStep]) -> String {
    let mut out = String::new();
    for s in steps {
        out.push_str(&format!(
            "{} {:<10} {}\n",
            if s.ok { "ok  " } else { "FAIL" },
            s.step,
            s.detail
        ));
    }
    out
}

/// `modal setup`: the SDK and credentials, the app, the secret, the volume,
/// the agent binary, the image. Stops at the first failure (later steps need
/// the earlier). It runs on a new bridge process, so what the user fixed
/// since the running one started (`modal token new`, `pip install`) counts,
/// here and for every later call. `on_step` is told each step as it begins
/// (`ModalSetupWithProgress`, the CLI's `image_build` progress).
pub async fn setup(
    modal: &ModalBackend,
    force_build: bool,
    on_step: &(dyn Fn(&str) + Send + Sync),
) -> Result<ModalSetupReport> {
    let cfg = modal.config().clone();
    let mut steps = Vec::new();
    on_step("starting the Modal bridge (the Python SDK)");
    let greeting = match modal.bridge().restart().await {
        Ok(g) => g,
        Err(e) => return Err(fail(steps, "sdk", e)),
    };
    steps.push(step(
        "sdk",
        true,
        format!(
            "modal {} on Python {}",
            greeting.sdk_version, greeting.python
        ),
    ));
    if greeting.credentials == "none" {
        return Err(fail(
            steps,
            "token",
            CodedError::new(
                error_codes::MODAL_CREDENTIALS_MISSING,
                "no Modal token: neither MODAL_TOKEN_ID/MODAL_TOKEN_SECRET nor ~/.modal.toml",
            ),
        ));
    }
    on_step(&format!(
        "checking the Modal token (from {}) on the app {}",
        greeting.credentials, cfg.app_name
    ));
    let app = match modal.call("app.lookup", json!({"app": cfg.app_name})).await {
        Ok(v) => v,
        Err(e) => return Err(fail(steps, "token", e)),
    };
    steps.push(step(
        "token",
        true,
        format!("accepted (from {})", greeting.credentials),
    ));
    steps.push(step(
        "app",
        true,
        format!(
            "{} ({})",
            cfg.app_name,
            app["app_id"].as_str().unwrap_or("?")
        ),
    ));
    on_step(&format!("checking the Modal secret {}", cfg.secret_name));
    if let Err(e) = modal
        .call(
            "secret.check",
            json!({"name": cfg.secret_name, "required_keys": ["ANTHROPIC_API_KEY"]}),
        )
        .await
    {
        return Err(fail(steps, "secret", e));
    }
    steps.push(step("secret", true, cfg.secret_name.clone()));
    on_step(&format!(
        "creating or finding the volume {}",
        cfg.volume_name
    ));
    let volume = match modal
        .call(
            "volume.ensure",
            json!({"volume": cfg.volume_name, "create": true}),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => return Err(fail(steps, "volume", e)),
    };
    steps.push(step(
        "volume",
        true,
        format!(
            "{} (v{})",
            cfg.volume_name,
            volume["version"].as_u64().unwrap_or(2)
        ),
    ));
    on_step("checking the agent binary for the image");
    let agent = match modal.shipped_agent() {
        Ok(a) => a,
        Err(e) => return Err(fail(steps, "agent", e)),
    };
    let mut detail = agent.describe();
    if let Some(warning) = agent.warning() {
        detail.push_str(&format!("\n     warning {warning}"));
    }
    steps.push(step("agent", true, detail));
    let image = match modal.image_args() {
        Ok(i) => i,
        Err(e) => return Err(fail(steps, "image", e)),
    };
    on_step(&format!(
        "{} the session image (images/Dockerfile: Claude Code {}, agent {}) with Modal's image builder",
        if force_build {
            "rebuilding"
        } else {
            "building (or finding cached)"
        },
        cfg.claude_code_version,
        agent.info.version
    ));
    let built = modal
        .bridge()
        .call(
            "image.build",
            json!({"app": cfg.app_name, "image": image, "force": force_build}),
            Duration::from_secs_f64(cfg.create_timeout_seconds),
        )
        .await;
    match built {
        Ok(v) => steps.push(step(
            "image",
            true,
            format!(
                "{} ({}{})",
                v["tag"].as_str().unwrap_or("?"),
                v["image_id"].as_str().unwrap_or("?"),
                if force_build { ", rebuilt" } else { "" }
            ),
        )),
        Err(e) => return Err(fail(steps, "image", e)),
    }
    Ok(ModalSetupReport { ok: true, steps })
}

/// `modal health-check`: the seeds' health_check, in a short-lived sandbox
/// from the session image with the volume and the secret.
pub async fn health_check(modal: &ModalBackend) -> Result<ModalHealthReport> {
    let cfg = modal.config().clone();
    let image = modal.image_args()?;
    let ran = modal
        .bridge()
        .call(
            "sandbox.run",
            json!({
                "app": cfg.app_name,
                "image": image,
                // app.py's HEALTH_CHECK_ARGV: the same check as `modal run app.py::health_check`.
                "script": "health_check",
                "script_args": [cfg.volume_mount, cfg.agent_path, cfg.claude_path],
                "env": {},
                "secrets": modal.sandbox_secrets(&[]),
                "volumes": {cfg.volume_mount.display().to_string(): cfg.volume_name},
                "workdir": cfg.container_home,
                "timeout_s": 300,
            }),
            Duration::from_secs_f64(cfg.create_timeout_seconds),
        )
        .await?;
    let stdout = ran["stdout"].as_str().unwrap_or("");
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or("");
    let mut report: ModalHealthReport = serde_json::from_str(line).map_err(|e| {
        CodedError::new(
            error_codes::MODAL_BRIDGE_FAILED,
            format!(
                "the health check printed no report ({e}); exit {}, stderr: {}",
                ran["exit_code"],
                ran["stderr"].as_str().unwrap_or("")
            ),
        )
    })?;
    if !(report.volume_mounted && report.claude_installed && report.anthropic_key_set) {
        report.status = "degraded".into();
    }
    Ok(report)
}

/// `modal init-volume`: the seeds' init_volume_structure.
pub async fn init_volume(modal: &ModalBackend) -> Result<ModalInitVolumeReport> {
    let cfg = modal.config().clone();
    modal
        .call(
            "volume.ensure",
            json!({"volume": cfg.volume_name, "create": true}),
        )
        .await?;
    let scratch = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (dir, text) in VOLUME_DIRS {
        let local = scratch.path().join(format!("{dir}.README"));
        std::fs::write(&local, text)?;
        files.push((local, format!("{dir}/README")));
    }
    modal.put_files(&files).await?;
    Ok(ModalInitVolumeReport {
        volume: cfg.volume_name,
        directories: VOLUME_DIRS.iter().map(|(d, _)| d.to_string()).collect(),
    })
}

/// `config sync [--dry-run]`: what of the user's Claude Code config goes to
/// the volume (only what changed), and what never does. The plan is
/// `config_sync`'s: only its bytes are uploaded, from a scratch copy.
pub async fn config_sync(
    modal: &ModalBackend,
    args: &ConfigSyncRequest,
) -> Result<ConfigSyncReport> {
    let dry_run = args.dry_run;
    let home = Some(args.home.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .ok_or_else(|| CodedError::new(error_codes::INVALID_INPUT, "HOME is not set"))?;
    let config_dir = Some(args.claude_config_dir.as_str())
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let source = config_sync::ConfigSource::from_env(&home, config_dir.as_deref());
    let options = config_sync::CollectOptions {
        include_history: args.include_history,
        include_mcp_secrets: args.include_mcp_secrets,
    };
    let plan =
        tokio::task::spawn_blocking(move || config_sync::plan_source(&source, &options)).await??;
    let scratch = tempfile::tempdir()?;
    let manifest_local = scratch.path().join("manifest.json");
    let remote = match modal
        .get_file(config_sync::MANIFEST_PATH, &manifest_local)
        .await
    {
        Ok(_) => {
            let text = std::fs::read(&manifest_local)?;
            Some(
                serde_json::from_slice::<config_sync::RemoteManifest>(&text).map_err(|e| {
                    CodedError::new(
                        error_codes::MODAL_BRIDGE_FAILED,
                        format!(
                            "{} on the volume is unreadable: {e}",
                            config_sync::MANIFEST_PATH
                        ),
                    )
                })?,
            )
        }
        Err(e) if e.code == error_codes::MODAL_OBJECT_NOT_FOUND => None,
        Err(e) => return Err(e.into()),
    };
    let changes = config_sync::changes(&plan, remote.as_ref());
    let text = config_sync::render_sync(&plan, &changes, dry_run);
    let report = ConfigSyncReport {
        dry_run,
        upload: changes.upload.clone(),
        delete: changes.delete.clone(),
        unchanged: changes.unchanged.clone(),
        withheld: plan
            .withheld
            .iter()
            .map(|w| ConfigWithheld {
                path: w.path.clone(),
                json_path: w.json_path.clone(),
                reason: w.reason.clone(),
            })
            .collect(),
        text,
    };
    if dry_run || changes.is_noop() {
        return Ok(report);
    }
    let upload: std::collections::BTreeSet<&str> =
        changes.upload.iter().map(String::as_str).collect();
    let staged = scratch.path().join("files");
    let mut files = Vec::new();
    for file in plan
        .files
        .iter()
        .filter(|f| upload.contains(f.rel_path.as_str()))
    {
        let local = config_sync::materialize(file, &staged)?;
        files.push((
            local,
            format!("{}/{}", config_sync::VOLUME_DIR, file.rel_path),
        ));
    }
    modal.put_files(&files).await?;
    for path in &changes.delete {
        modal
            .remove_file(&format!("{}/{}", config_sync::VOLUME_DIR, path))
            .await?;
    }
    // The manifest last: it says what the volume holds.
    std::fs::write(&manifest_local, serde_json::to_vec_pretty(&changes.next)?)?;
    modal
        .put_files(&[(manifest_local, config_sync::MANIFEST_PATH.to_string())])
        .await?;
    Ok(report)
}
