//! The `modal` backend: each container is a Modal sandbox running
//! `parhelia-agent` from the session image, with the shared v2 volume mounted
//! for journals and checkpoints and an `h2` tunnel to the agent's gRPC port.
//! Every Modal call goes through the [`bridge::Bridge`] (the official Python
//! SDK); nothing here speaks Modal's own protocol.
//!
//! On the volume (paths relative to its root):
//!
//! ```text
//! sessions/<sid>/journal/<cid>.jsonl       the agent's journal
//! sessions/<sid>/checkpoints/              the session's checkpoint store
//! sessions/<sid>/containers/<cid>/spec.json
//! config/claude/…, config/manifest.json    `parhelia config sync`
//! ```
//!
//! The coordinator reads the volume from outside: journals when an agent is
//! gone, and checkpoint stores, which it mirrors under
//! `<state>/modal/mirror/<volume>/sessions/<sid>/checkpoints/` (only the
//! write-once files: `store.json`, `layers/`, `manifests/`). A checkpoint is
//! durable once its manifest has come back through that mirror and verified.

pub mod bridge;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use parhelia_checkpoint::durable;
use serde_json::{Value, json};

use self::bridge::{Bridge, BridgeConfig};
use super::{Backend, ContainerHandle, Endpoint, LaunchRequest, ObservedContainer};
use crate::config::ModalConfig;
use crate::error::{CodedError, coded};
use crate::error_codes;
use crate::plan::{self, AgentSettings, LocalLayout};

/// Tag keys on every sandbox we create.
pub const TAG_PARHELIA: &str = "parhelia";
pub const TAG_COORDINATOR: &str = "parhelia.coordinator";
pub const TAG_TASK: &str = "parhelia.task";
pub const TAG_SESSION: &str = "parhelia.session";
pub const TAG_CONTAINER: &str = "parhelia.container";

/// Environment variables never sent to a sandbox: the Anthropic key comes
/// from the named Modal secret, and the container has its own HOME and PATH.
const NEVER_SENT: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "HOME",
    "PATH",
    "TMPDIR",
];

/// Whether a variable of a launch request is sent to a sandbox.
fn is_sent(name: &str) -> bool {
    !NEVER_SENT.contains(&name) && !name.starts_with("PARHELIA_")
}

/// The names of the variables a sandbox gets from a request carrying
/// `names` (what [`ModalBackend::sandbox_env`] sends; `HOME` is always the
/// container's own), sorted: what a dry run lists as sent.
pub fn sent_env_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut sent: Vec<String> = names.into_iter().filter(|k| is_sent(k)).cloned().collect();
    sent.push("HOME".into());
    sent.sort();
    sent.dedup();
    sent
}

/// Resources for one sandbox.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Modal's GPU string (`A10G`, `H100:2`), or a comma-separated list of
    /// them tried in order when Modal has no capacity (`A100,A10G`), if any.
    pub gpu: Option<String>,
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
    pub timeout_seconds: Option<u64>,
}

/// Seconds Modal's sandbox timeout runs past a task's `--timeout`, so the agent's
/// own stop (a final checkpoint) happens first.
pub const TIMEOUT_BACKSTOP_SECONDS: u64 = 300;

pub struct ModalBackend {
    state_root: PathBuf,
    coordinator_id: String,
    config: ModalConfig,
    timing: AgentSettings,
    bridge: Bridge,
    /// The local agent binary baked into the image.
    agent_bin: Option<PathBuf>,
}

/// Where a Modal session and its container live, as the sandbox sees them.
pub fn container_layout(config: &ModalConfig, session_id: &str, container_id: &str) -> LocalLayout {
    let home = &config.container_home;
    let volume_dir = config.volume_mount.join("sessions").join(session_id);
    let container_dir = volume_dir.join("containers").join(container_id);
    let local_container = home.join("containers").join(container_id);
    let runtime_dir = local_container.join("runtime");
    LocalLayout {
        session_dir: home.join("sessions").join(session_id),
        workspace_dir: home.join("sessions").join(session_id).join("workspace"),
        volume_dir,
        spec_path: container_dir.join("spec.json"),
        container_dir,
        claude_config_dir: local_container.join("claude-config"),
        agent_log_path: runtime_dir.join("agent.log"),
        agent_json_path: runtime_dir.join("agent.json"),
        runtime_dir,
    }
}

impl ModalBackend {
    pub fn new(
        state_root: PathBuf,
        coordinator_id: String,
        config: ModalConfig,
        timing: AgentSettings,
    ) -> Self {
        let bridge = Bridge::new(Self::bridge_config(&state_root, &config, Vec::new()));
        ModalBackend {
            agent_bin: config.agent_bin.clone(),
            state_root,
            coordinator_id,
            config,
            timing,
            bridge,
        }
    }

    fn bridge_config(
        state_root: &Path,
        config: &ModalConfig,
        env: Vec<(String, String)>,
    ) -> BridgeConfig {
        BridgeConfig {
            python: config.python.clone(),
            dir: state_root.join("modal").join("bridge"),
            pythonpath: config.bridge_pythonpath.clone(),
            start_timeout: Duration::from_secs(60),
            env,
        }
    }

    /// Extra environment for the bridge process (before its first call).
    pub fn with_bridge_env(mut self, env: Vec<(String, String)>) -> Self {
        self.bridge = Bridge::new(Self::bridge_config(&self.state_root, &self.config, env));
        self
    }

    pub fn config(&self) -> &ModalConfig {
        &self.config
    }

    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    fn call_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.config.call_timeout_seconds)
    }

    /// One bridge call with the ordinary deadline.
    pub async fn call(&self, op: &str, args: Value) -> Result<Value, CodedError> {
        self.bridge.call(op, args, self.call_deadline()).await
    }

    /// The image description the bridge builds from (`images/modal/app.py`).
    pub fn image_args(&self) -> Result<Value, CodedError> {
        let agent_bin = match &self.agent_bin {
            Some(path) => path.clone(),
            None => {
                let exe = std::env::current_exe().ok();
                let beside = exe
                    .as_deref()
                    .and_then(Path::parent)
                    .map(|d| d.join(crate::binaries::AGENT_BIN_NAME));
                match beside {
                    Some(p) if p.is_file() => p,
                    _ => {
                        return Err(CodedError::new(
                            error_codes::AGENT_FAILED_TO_START,
                            "no parhelia-agent to bake into the Modal image: build it (`cargo build --release -p parhelia-agent`) or set modal.agent_bin",
                        ));
                    }
                }
            }
        };
        check_agent_binary(&agent_bin)?;
        Ok(json!({
            "agent_bin": agent_bin,
            "claude_code_version": self.config.claude_code_version,
        }))
    }

    /// A container path on the volume, relative to the volume's root.
    pub fn volume_path(&self, container_path: &Path) -> Result<String> {
        let rel = container_path
            .strip_prefix(&self.config.volume_mount)
            .with_context(|| {
                format!(
                    "{} is not on the volume ({})",
                    container_path.display(),
                    self.config.volume_mount.display()
                )
            })?;
        Ok(rel.to_string_lossy().into_owned())
    }

    /// The session's checkpoint store on the volume (relative path).
    fn store_prefix(&self, session_id: &str) -> String {
        format!("sessions/{session_id}/checkpoints")
    }

    /// The local mirror of a session's checkpoint store.
    pub fn mirror_dir(&self, session_id: &str) -> PathBuf {
        self.state_root
            .join("modal")
            .join("mirror")
            .join(&self.config.volume_name)
            .join("sessions")
            .join(session_id)
            .join("checkpoints")
    }

    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = self.state_root.join("modal").join("tmp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Files under `prefix` on the volume: relative path → size.
    pub async fn list_volume(&self, prefix: &str) -> Result<BTreeMap<String, u64>, CodedError> {
        let listed = self
            .call(
                "volume.list",
                json!({"volume": self.config.volume_name, "path": prefix, "recursive": true}),
            )
            .await?;
        Ok(volume_files(&listed, prefix))
    }

    /// Downloads one volume file to `dest`.
    pub async fn get_file(&self, path: &str, dest: &Path) -> Result<u64, CodedError> {
        let got = self
            .call(
                "volume.get",
                json!({"volume": self.config.volume_name, "path": path, "dest": dest}),
            )
            .await?;
        Ok(got["size"].as_u64().unwrap_or(0))
    }

    /// Uploads local files (`(local, volume path)`) in one batch.
    pub async fn put_files(&self, files: &[(PathBuf, String)]) -> Result<(), CodedError> {
        if files.is_empty() {
            return Ok(());
        }
        let files: Vec<Value> = files
            .iter()
            .map(|(src, path)| json!({"src": src, "path": path}))
            .collect();
        self.call(
            "volume.put",
            json!({"volume": self.config.volume_name, "files": files}),
        )
        .await?;
        Ok(())
    }

    pub async fn remove_file(&self, path: &str) -> Result<bool, CodedError> {
        let removed = self
            .call(
                "volume.remove",
                json!({"volume": self.config.volume_name, "path": path, "recursive": false}),
            )
            .await?;
        Ok(removed["removed"].as_bool().unwrap_or(false))
    }

    /// Removes a session's whole directory from the volume (`task delete`):
    /// true when something was removed.
    pub async fn remove_session_data(&self, session_id: &str) -> Result<bool, CodedError> {
        let removed = self
            .call(
                "volume.remove",
                json!({
                    "volume": self.config.volume_name,
                    "path": crate::storage::session_prefix(session_id),
                    "recursive": true,
                }),
            )
            .await?;
        Ok(removed["removed"].as_bool().unwrap_or(false))
    }

    /// Brings the local mirror of a session's store up to date with the
    /// volume: fetches write-once files it lacks, drops files the volume no
    /// longer has (pruned). Returns the mirror's root, or `None` when the
    /// volume holds no store for the session.
    pub async fn pull_store(&self, session_id: &str) -> Result<Option<PathBuf>> {
        let prefix = self.store_prefix(session_id);
        let remote: BTreeMap<String, u64> = self
            .list_volume(&prefix)
            .await?
            .into_iter()
            .filter(|(p, _)| parhelia_checkpoint::durable::is_durable_file(p))
            .collect();
        let mirror = self.mirror_dir(session_id);
        if !remote.contains_key(durable::MARKER) {
            return Ok(None);
        }
        for dir in durable::DIRS {
            std::fs::create_dir_all(mirror.join(dir))?;
        }
        let local = parhelia_checkpoint::durable::durable_files(&mirror)?;
        // Layers before manifests: a manifest is only useful with its layers.
        let wanted = durable::in_commit_order(
            remote
                .iter()
                .filter(|(p, size)| local.get(*p) != Some(size))
                .map(|(p, _)| p),
        );
        for rel in wanted {
            self.get_file(&format!("{prefix}/{rel}"), &mirror.join(rel))
                .await?;
        }
        for rel in local.keys() {
            if !remote.contains_key(rel) {
                let _ = std::fs::remove_file(mirror.join(rel));
            }
        }
        Ok(Some(mirror))
    }

    /// Copies the spec of every container on the volume
    /// (`sessions/<sid>/containers/<cid>/spec.json`, which holds no secret) into
    /// `dest/<cid>/spec.json`: what a rolled-back database rebuilds ended Modal
    /// work from. Only well-formed ids; at most 10,000. Returns how many.
    pub async fn copy_specs(&self, dest: &Path) -> Result<usize> {
        let listed = self.list_volume("sessions").await?;
        let mut copied = 0;
        for rel in listed.keys() {
            let parts: Vec<&str> = rel.split('/').collect();
            let [sid, "containers", cid, "spec.json"] = parts.as_slice() else {
                continue;
            };
            if !crate::ids::is_well_formed(crate::ids::SESSION_PREFIX, sid)
                || !crate::ids::is_well_formed(crate::ids::CONTAINER_PREFIX, cid)
            {
                continue;
            }
            if copied >= 10_000 {
                break;
            }
            std::fs::create_dir_all(dest.join(cid))?;
            self.get_file(
                &format!("sessions/{rel}"),
                &dest.join(cid).join("spec.json"),
            )
            .await?;
            copied += 1;
        }
        Ok(copied)
    }

    /// Downloads every durable file of the session's store on the volume into
    /// a new directory under the scratch area (`modal/tmp/store-<sid>-<rand>/`):
    /// the volume's bytes as they are, for verifying and repairing them.
    /// Copies older than a day are removed first. `None`: no store.
    pub async fn copy_store(&self, session_id: &str) -> Result<Option<PathBuf>> {
        let prefix = self.store_prefix(session_id);
        let remote: BTreeMap<String, u64> = self
            .list_volume(&prefix)
            .await?
            .into_iter()
            .filter(|(p, _)| parhelia_checkpoint::durable::is_durable_file(p))
            .collect();
        if !remote.contains_key(durable::MARKER) {
            return Ok(None);
        }
        let scratch = self.scratch_dir()?;
        remove_stale_copies(&scratch);
        let copy = scratch
            .join(format!("store-{session_id}-{}", crate::ids::random_hex(4)))
            .join("checkpoints");
        for dir in durable::DIRS {
            std::fs::create_dir_all(copy.join(dir))?;
        }
        for rel in remote.keys() {
            self.get_file(&format!("{prefix}/{rel}"), &copy.join(rel))
                .await?;
        }
        Ok(Some(copy))
    }

    /// Uploads the files a repair replaced or wrote in a [`Self::copy_store`]
    /// copy (layers first, manifests last) and removes from the volume the
    /// files it moved aside; the mirror follows. Only a copy this backend made,
    /// and only a store's durable file names, are accepted.
    pub async fn write_back(
        &self,
        session_id: &str,
        copy: &Path,
        put: &[String],
        remove: &[String],
    ) -> Result<()> {
        let scratch = self.scratch_dir()?;
        let made_here = copy
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("store-{session_id}-")))
            && copy.file_name().is_some_and(|n| n == "checkpoints")
            && copy.parent().and_then(Path::parent) == Some(scratch.as_path());
        if !made_here {
            anyhow::bail!(
                "{} is not a copy of session {session_id}'s store this coordinator made",
                copy.display()
            );
        }
        if let Some(bad) = put
            .iter()
            .chain(remove)
            .find(|rel| !parhelia_checkpoint::durable::is_durable_file(rel))
        {
            anyhow::bail!("{bad:?} is not a checkpoint store file");
        }
        let prefix = self.store_prefix(session_id);
        let mut data = Vec::new();
        let mut manifests = Vec::new();
        for rel in put {
            let item = (copy.join(rel), format!("{prefix}/{rel}"));
            if durable::is_commit_point(rel) {
                manifests.push(item);
            } else {
                data.push(item);
            }
        }
        self.put_files(&data).await?;
        self.put_files(&manifests).await?;
        for rel in remove {
            self.remove_file(&format!("{prefix}/{rel}")).await?;
        }
        // The mirror takes the volume's new bytes (and forgets the removed).
        let mirror = self.mirror_dir(session_id);
        for rel in put.iter().chain(remove) {
            let _ = std::fs::remove_file(mirror.join(rel));
        }
        self.pull_store(session_id).await?;
        Ok(())
    }

    /// Uploads the write-once files of a local store that the session's
    /// store on the volume lacks (layers first, manifests last, so a
    /// manifest never names a layer that is not there yet).
    pub async fn push_store(&self, session_id: &str, local_store: &Path) -> Result<()> {
        let prefix = self.store_prefix(session_id);
        let remote = self.list_volume(&prefix).await?;
        let local = parhelia_checkpoint::durable::durable_files(local_store)?;
        let mut data = Vec::new();
        let mut manifests = Vec::new();
        for (rel, size) in &local {
            if remote.get(rel) == Some(size) {
                continue;
            }
            let item = (local_store.join(rel), format!("{prefix}/{rel}"));
            if durable::is_commit_point(rel) {
                manifests.push(item);
            } else {
                data.push(item);
            }
        }
        self.put_files(&data).await?;
        self.put_files(&manifests).await?;
        Ok(())
    }

    /// Whether `parhelia config sync` has written its manifest to the volume.
    async fn config_synced(&self) -> Result<bool, CodedError> {
        let manifest = crate::config_sync::MANIFEST_PATH;
        let (dir, name) = manifest.rsplit_once('/').unwrap_or(("", manifest));
        Ok(self.list_volume(dir).await?.contains_key(name))
    }

    /// Finds the sandbox of one of our containers (`None`: not running).
    async fn sandbox_of(&self, container_id: &str) -> Result<Option<String>, CodedError> {
        let listed = self
            .call(
                "sandbox.list",
                json!({"app": self.config.app_name, "tags": {
                    TAG_COORDINATOR: self.coordinator_id,
                    TAG_CONTAINER: container_id,
                }}),
            )
            .await?;
        Ok(listed["sandboxes"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|s| s["sandbox_id"].as_str())
            .map(str::to_string))
    }

    /// Modal's own usage figures for a sandbox (`sandbox.stats`; works
    /// for sandboxes that have finished). Modal reports them minutes late.
    pub async fn sandbox_stats(&self, sandbox_id: &str) -> Result<SandboxStats, CodedError> {
        let reply = self
            .call("sandbox.stats", json!({"sandbox_id": sandbox_id}))
            .await?;
        Ok(SandboxStats::from_reply(reply))
    }

    /// The user a Modal session runs as (`modal.run_as_user`), `None` for root.
    pub fn session_user(&self) -> Option<String> {
        match self.config.run_as_user.trim() {
            "" | "root" => None,
            user => Some(user.to_string()),
        }
    }

    /// The environment a sandbox gets (never the Anthropic key, HOME or PATH
    /// from this machine).
    pub fn sandbox_env(&self, request: &LaunchRequest) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = request
            .env
            .iter()
            .filter(|(k, _)| is_sent(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.insert(
            "HOME".into(),
            self.config.container_home.display().to_string(),
        );
        env
    }

    /// The GPU types a launch tries, in order: the task's `--gpu` (one, or a
    /// comma-separated list), else `modal.gpu`; none: no GPU.
    pub fn gpu_choices(&self, requested: Option<&str>) -> Vec<String> {
        match requested.filter(|g| !g.trim().is_empty()) {
            Some(list) => crate::budget::gpu_choices(list)
                .into_iter()
                .map(str::to_string)
                .collect(),
            None => self.config.gpu.clone(),
        }
    }

    /// The named Modal secrets a sandbox gets, in the order Modal applies
    /// them (a later one's key wins): the Anthropic key's secret first, which
    /// must hold `ANTHROPIC_API_KEY` (`required_keys`: Modal refuses the
    /// create when it does not, E405), then `modal.secrets`, then the task's
    /// `--secret` names; each name once.
    pub fn sandbox_secrets(&self, task_secrets: &[String]) -> Vec<Value> {
        let mut names: Vec<&String> = Vec::new();
        for name in self.config.secrets.iter().chain(task_secrets) {
            if *name != self.config.secret_name && !names.contains(&name) {
                names.push(name);
            }
        }
        std::iter::once(json!({
            "name": self.config.secret_name,
            "required_keys": ["ANTHROPIC_API_KEY"],
        }))
        .chain(names.into_iter().map(|n| json!({ "name": n })))
        .collect()
    }

    /// The `sandbox.create` arguments for a launch (pure apart from the
    /// image lookup; tests check them).
    pub fn create_args(
        &self,
        request: &LaunchRequest,
        layout: &LocalLayout,
        image: Value,
        gpu: Option<&str>,
    ) -> Value {
        let ids = &request.ids;
        let res = &request.resources;
        // A `--timeout` is the agent's to enforce (final checkpoint, then E301);
        // Modal's sandbox timeout is the backstop a little later.
        let timeout_s = res
            .timeout_seconds
            .map(|t| t.saturating_add(TIMEOUT_BACKSTOP_SECONDS))
            .unwrap_or_else(|| (self.config.default_timeout_hours * 3600.0).round() as u64);
        // The agent runs as root (Modal starts sandboxes as root) and runs the
        // session as `modal.run_as_user` (the spec's `session_user`).
        let argv: Vec<String> = vec![
            self.config.agent_path.display().to_string(),
            "run".into(),
            "--spec".into(),
            layout.spec_path.display().to_string(),
            "--label".into(),
            format!("{TAG_COORDINATOR}={}", self.coordinator_id),
        ];
        json!({
            "app": self.config.app_name,
            "name": ids.container_id,
            "image": image,
            "argv": argv,
            "env": self.sandbox_env(request),
            "secrets": self.sandbox_secrets(&request.secrets),
            "region": request.region.as_ref().or(self.config.region.as_ref()),
            "inline_secret": {"PARHELIA_SESSION_SECRET": request.secret.expose()},
            "volumes": {self.config.volume_mount.display().to_string(): self.config.volume_name},
            "workdir": self.config.container_home,
            "gpu": gpu,
            "cpu": res.cpu.unwrap_or(self.config.cpu_count as f64),
            "memory_mib": res.memory_mb.unwrap_or(self.config.memory_mb),
            "timeout_s": timeout_s.clamp(60, 24 * 3600),
            "idle_timeout_s": self.config.idle_timeout_minutes.map(|m| (m * 60.0).round() as u64),
            "h2_ports": [self.config.agent_port],
            "tags": {
                TAG_PARHELIA: "1",
                TAG_COORDINATOR: self.coordinator_id,
                TAG_TASK: ids.task_id,
                TAG_SESSION: ids.session_id,
                TAG_CONTAINER: ids.container_id,
            },
        })
    }

    /// Creates the session's starting point from a local directory: a
    /// checkpoint of it (trigger `workspace`) in the local mirror, pushed to
    /// the volume. The agent restores it before Claude Code starts, so
    /// uncommitted changes and unpushed commits arrive as they are.
    async fn ship_workspace(
        &self,
        session_id: &str,
        source: &Path,
        limits: crate::backend::workspace_copy::CopyLimits,
    ) -> Result<String> {
        let mirror = self.mirror_dir(session_id);
        let source = source.to_path_buf();
        let exclude_state = self.state_root.clone();
        let mirror_for_task = mirror.clone();
        let id = tokio::task::spawn_blocking(move || -> Result<String> {
            // The same refusals as a local copy (special files, E112) before
            // anything is stored.
            crate::backend::workspace_copy::preflight(
                &source,
                std::slice::from_ref(&exclude_state),
                limits,
            )?;
            crate::checkpoints::seed_checkpoint(&mirror_for_task, &source, &exclude_state)
        })
        .await
        .context("the workspace checkpoint panicked")??;
        self.push_store(session_id, &mirror).await?;
        Ok(id)
    }
}

/// A `sandbox.stats` answer.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxStats {
    /// False: Modal had no statistics for the sandbox (`reason` says why).
    pub available: bool,
    pub reason: Option<String>,
    /// The cost in USD at the workspace's rates; `None` until Modal has
    /// recorded usage.
    pub cost_usd: Option<f64>,
    /// The SDK's `SandboxStats` as the bridge serialized it.
    pub stats: Value,
}

impl SandboxStats {
    pub fn from_reply(reply: Value) -> Self {
        let available = reply["available"].as_bool().unwrap_or(false);
        let stats = reply.get("stats").cloned().unwrap_or(Value::Null);
        SandboxStats {
            available,
            reason: reply["reason"].as_str().map(str::to_string),
            cost_usd: if available {
                stats["cost"].as_f64().filter(|c| c.is_finite())
            } else {
                None
            },
            stats,
        }
    }
}

/// The files of a `volume.list` reply under `prefix`: relative path → size. Entries
/// that are not files, lie outside `prefix` or are the prefix itself are left out.
pub fn volume_files(listed: &Value, prefix: &str) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    for entry in listed["entries"].as_array().into_iter().flatten() {
        if entry["type"].as_str() != Some("file") {
            continue;
        }
        let Some(path) = entry["path"].as_str() else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let rel = match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some(rest) => rest.trim_start_matches('/').to_string(),
            None => continue,
        };
        if !rel.is_empty() {
            files.insert(rel, entry["size"].as_u64().unwrap_or(0));
        }
    }
    files
}

/// The newest glibc the session image has (Debian bookworm).
pub const IMAGE_GLIBC: (u32, u32) = (2, 36);

/// The agent baked into the image must run there: an x86-64 Linux ELF
/// needing no newer glibc than the image's (or static). Checked before a
/// build or a launch, so a binary built on a newer distribution is refused
/// here with what to do, not found dead in a sandbox.
// A header check and a `GLIBC_2.N` scan rather than `object`'s `.gnu.version_r` walk: the
// scan can only over-estimate, and its tests need a few bytes, not a real ELF (ARCHITECTURE.md).
pub fn check_agent_binary(path: &Path) -> Result<(), CodedError> {
    // Read and scanned once per binary (path, length, mtime), not per launch: the scan
    // of a 100 MB agent runs on the launching task's thread, and launches run at once
    // (a hundred of them held every tokio worker of the coordinator, which stopped
    // answering: scripts/bench-dispatch's create_under_load).
    type Seen = Option<(
        (PathBuf, u64, Option<std::time::SystemTime>),
        Result<(), CodedError>,
    )>;
    static CHECKED: std::sync::Mutex<Seen> = std::sync::Mutex::new(None);
    let key = std::fs::metadata(path)
        .ok()
        .map(|m| (path.to_path_buf(), m.len(), m.modified().ok()));
    if let Some(key) = &key
        && let Some((seen, verdict)) = CHECKED.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
        && seen == key
    {
        return verdict.clone();
    }
    let verdict = check_agent_binary_now(path);
    if let Some(key) = key {
        *CHECKED.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, verdict.clone()));
    }
    verdict
}

fn check_agent_binary_now(path: &Path) -> Result<(), CodedError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CodedError::new(
            error_codes::AGENT_FAILED_TO_START,
            format!("cannot read the agent binary {}: {e}", path.display()),
        )
    })?;
    let refuse = |why: String| {
        CodedError::new(
            error_codes::AGENT_FAILED_TO_START,
            format!(
                "{} cannot run in the Modal image: {why}; build it for the image (`cargo build --release -p parhelia-agent` on Debian bookworm, or `--target x86_64-unknown-linux-musl`) and set modal.agent_bin",
                path.display()
            ),
        )
    };
    // ELF, 64-bit, little-endian, e_machine EM_X86_64 (62).
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(refuse("it is not a 64-bit little-endian ELF file".into()));
    }
    if u16::from_le_bytes([bytes[18], bytes[19]]) != 62 {
        return Err(refuse("it is not built for x86-64".into()));
    }
    if let Some(needed) = newest_glibc(&bytes)
        && needed > IMAGE_GLIBC
    {
        return Err(refuse(format!(
            "it needs glibc {}.{}, the image has {}.{}",
            needed.0, needed.1, IMAGE_GLIBC.0, IMAGE_GLIBC.1
        )));
    }
    Ok(())
}

/// The newest `GLIBC_2.N[.M]` symbol version an ELF file names (`None`:
/// static, or not linked against glibc).
pub fn newest_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    let needle = b"GLIBC_2.";
    let mut newest = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(needle.len()).position(|w| w == needle) {
        let start = i + pos + needle.len();
        let digits: String = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        if let Ok(minor) = digits.parse::<u32>() {
            let v = (2, minor);
            if newest.is_none_or(|n| v > n) {
                newest = Some(v);
            }
        }
        i = start;
    }
    newest
}

#[async_trait]
impl Backend for ModalBackend {
    fn name(&self) -> &'static str {
        "modal"
    }

    fn session_layout(&self, session_id: &str, container_id: &str) -> Option<LocalLayout> {
        Some(container_layout(&self.config, session_id, container_id))
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerHandle> {
        let ids = &request.ids;
        let layout = container_layout(&self.config, &ids.session_id, &ids.container_id);
        let image = self.image_args()?;
        let mut session = request.session.clone();
        if let Some(source) = &request.workspace_source {
            let seed = self
                .ship_workspace(&ids.session_id, source, request.copy_limits)
                .await?;
            tracing::info!(container_id = %ids.container_id, checkpoint = %seed, "workspace shipped to the volume");
            if session.restore_checkpoint.is_none() {
                session.restore_checkpoint = Some(seed);
            }
        }
        let mut spec = plan::agent_spec(
            &session,
            ids,
            &layout,
            &self.config.claude_path,
            request.agent_settings.as_ref().unwrap_or(&self.timing),
        );
        // Config keeps `modal.agent_port` within 0..=65535.
        let port = u16::try_from(self.config.agent_port).map_err(|_| {
            anyhow::anyhow!("modal.agent_port {} is not a port", self.config.agent_port)
        })?;
        spec.listen_addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        // The agent stops at the timeout with a final checkpoint; Modal's own
        // sandbox timeout stays the backstop.
        spec.timeout_ms = request
            .resources
            .timeout_seconds
            .map(|s| s.saturating_mul(1000));
        // The agent stays root and runs the session as the image's user, so
        // nothing the session runs can read the agent's secret or write its
        // journal and checkpoint store.
        spec.session_user = self.session_user();
        // Only when `config sync` has put something there: a seed the agent
        // cannot find is a warning in every session's events.
        if request.user_config && self.config_synced().await? {
            spec.claude_config_seed = Some(
                self.config
                    .volume_mount
                    .join(crate::config_sync::VOLUME_DIR),
            );
        }
        let scratch = self.scratch_dir()?;
        let spec_file = scratch.join(format!("{}.spec.json", ids.container_id));
        std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec)?)?;
        let put = self
            .put_files(&[(spec_file.clone(), self.volume_path(&layout.spec_path)?)])
            .await;
        let _ = std::fs::remove_file(&spec_file);
        put?;

        // `--gpu A100,A10G,L4` (else `modal.gpu`): each type in turn while
        // Modal has no capacity (E513), each refusal told to `on_gpu`.
        let choices = self.gpu_choices(request.resources.gpu.as_deref());
        let tell = |outcome: super::GpuOutcome| {
            if let Some(hook) = &request.on_gpu {
                (hook.0)(outcome);
            }
        };
        let mut attempts: Vec<Option<&str>> = choices.iter().map(|g| Some(g.as_str())).collect();
        if attempts.is_empty() {
            attempts.push(None);
        }
        let mut refusals: Vec<String> = Vec::new();
        let mut created = None;
        for (i, gpu) in attempts.iter().enumerate() {
            let args = self.create_args(request, &layout, image.clone(), *gpu);
            match self
                .bridge
                .call(
                    "sandbox.create",
                    args,
                    Duration::from_secs_f64(self.config.create_timeout_seconds),
                )
                .await
            {
                Ok(reply) => {
                    if let Some(gpu) = gpu {
                        tell(super::GpuOutcome::Chosen {
                            gpu: gpu.to_string(),
                        });
                    }
                    created = Some(reply);
                    break;
                }
                Err(e) if e.code.code == error_codes::MODAL_NO_CAPACITY.code && gpu.is_some() => {
                    let gpu = gpu.unwrap_or_default().to_string();
                    tracing::warn!(container_id = %ids.container_id, %gpu, "no capacity: {}", e.message);
                    refusals.push(format!("{gpu}: {}", e.message));
                    tell(super::GpuOutcome::Refused {
                        gpu,
                        message: e.message.clone(),
                    });
                    if i + 1 == attempts.len() {
                        return Err(CodedError::new(
                            error_codes::MODAL_NO_CAPACITY,
                            format!(
                                "Modal has no capacity for any GPU type of the list ({})",
                                refusals.join("; ")
                            ),
                        )
                        .into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let created = created.context("no sandbox.create was made")?;
        let sandbox_id = created["sandbox_id"]
            .as_str()
            .context("sandbox.create returned no sandbox id")?
            .to_string();
        tracing::info!(
            container_id = %ids.container_id,
            sandbox_id = %sandbox_id,
            existed = created["existed"].as_bool().unwrap_or(false),
            "sandbox created"
        );
        Ok(ContainerHandle {
            container_id: ids.container_id.clone(),
            pid: None,
            workspace_dir: layout.workspace_dir,
            volume_dir: layout.volume_dir,
            remote_id: Some(sandbox_id),
        })
    }

    async fn list(&self) -> Result<Vec<ObservedContainer>> {
        let listed = self
            .call(
                "sandbox.list",
                json!({"app": self.config.app_name, "tags": {TAG_COORDINATOR: self.coordinator_id}}),
            )
            .await?;
        let mut observed = Vec::new();
        for sb in listed["sandboxes"].as_array().into_iter().flatten() {
            let tags = &sb["tags"];
            // Only ours, whatever the bridge answered.
            if tags[TAG_COORDINATOR].as_str() != Some(self.coordinator_id.as_str()) {
                continue;
            }
            let Some(container_id) = tags[TAG_CONTAINER].as_str() else {
                continue;
            };
            observed.push(ObservedContainer {
                container_id: container_id.to_string(),
                session_id: tags[TAG_SESSION].as_str().unwrap_or_default().to_string(),
                pid: None,
                endpoint: None,
                coordinator_label: self.coordinator_id.clone(),
            });
        }
        observed.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(observed)
    }

    async fn terminate(&self, container_id: &str) -> Result<()> {
        let Some(sandbox_id) = self.sandbox_of(container_id).await? else {
            return Ok(());
        };
        self.call(
            "sandbox.terminate",
            json!({"sandbox_id": sandbox_id, "require_tags": {
                TAG_COORDINATOR: self.coordinator_id,
                TAG_CONTAINER: container_id,
            }}),
        )
        .await?;
        tracing::info!(container_id, sandbox_id = %sandbox_id, "sandbox terminated");
        Ok(())
    }

    async fn read_journal(
        &self,
        container_id: &str,
        session_id: &str,
        from_seq: u64,
    ) -> Result<Vec<parhelia_proto::Event>> {
        let path = format!("sessions/{session_id}/journal/{container_id}.jsonl");
        let dest = self
            .scratch_dir()?
            .join(format!("{container_id}.{}.jsonl", std::process::id()));
        match self.get_file(&path, &dest).await {
            Ok(_) => {}
            Err(e) if e.code == error_codes::MODAL_OBJECT_NOT_FOUND => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        let events = super::local::read_journal_file(&dest, from_seq);
        let _ = std::fs::remove_file(&dest);
        events
    }

    async fn endpoint(&self, container_id: &str) -> Result<Endpoint> {
        let sandbox_id = match self.sandbox_of(container_id).await? {
            Some(id) => id,
            None => {
                return Err(coded(
                    error_codes::AGENT_UNREACHABLE,
                    format!("the sandbox of {container_id} is not running"),
                ));
            }
        };
        let tunnels = self
            .call(
                "sandbox.tunnels",
                json!({"sandbox_id": sandbox_id, "timeout_s": self.config.call_timeout_seconds}),
            )
            .await?;
        let port = self.config.agent_port.to_string();
        let tunnel = tunnels["tunnels"]
            .get(&port)
            .or_else(|| {
                // The stand-in's agent may listen on any port (agent_port 0).
                tunnels["tunnels"]
                    .as_object()
                    .and_then(|t| (t.len() == 1).then(|| t.values().next()).flatten())
            })
            .with_context(|| {
                format!("the sandbox of {container_id} has no tunnel to port {port}")
            })?;
        let uri = tunnel["url"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                Some(format!(
                    "https://{}:{}",
                    tunnel["host"].as_str()?,
                    tunnel["port"].as_u64()?
                ))
            })
            .context("the tunnel has no address")?;
        Ok(Endpoint { uri, pid: None })
    }

    async fn store_dir(&self, session_id: &str, _volume_dir: &Path) -> Result<Option<PathBuf>> {
        self.pull_store(session_id).await
    }

    async fn import_store(&self, session_id: &str, _volume_dir: &Path, from: &Path) -> Result<()> {
        self.push_store(session_id, from).await
    }

    async fn store_copy(&self, session_id: &str, _volume_dir: &Path) -> Result<Option<PathBuf>> {
        self.copy_store(session_id).await
    }

    async fn write_back_store(
        &self,
        session_id: &str,
        copy: &Path,
        put: &[String],
        remove: &[String],
    ) -> Result<()> {
        self.write_back(session_id, copy, put, remove).await
    }
}

/// Removes store copies in the scratch area older than a day (a verify or
/// repair that was killed before it cleaned up).
fn remove_stale_copies(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if stale && entry.file_name().to_string_lossy().starts_with("store-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Storage charging measures a session's bytes with the bridge's volume listing.
#[async_trait::async_trait]
impl crate::storage::VolumeSizes for ModalBackend {
    async fn session_bytes(&self, session_id: &str) -> Result<u64, CodedError> {
        let files = self
            .list_volume(&crate::storage::session_prefix(session_id))
            .await?;
        Ok(files
            .values()
            .fold(0u64, |sum, size| sum.saturating_add(*size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_stats_cost_is_read_only_when_available() {
        let s = SandboxStats::from_reply(json!({"available": true, "stats": {
            "cost": 0.0125, "cost_by_resource": {"CPU": 0.01}, "duration": 120.0}}));
        assert_eq!(s.cost_usd, Some(0.0125));
        let s = SandboxStats::from_reply(json!({"available": true, "stats": {"cost": null}}));
        assert_eq!((s.available, s.cost_usd), (true, None));
        let s = SandboxStats::from_reply(
            json!({"available": false, "reason": "NotImplementedError: no"}),
        );
        assert_eq!((s.available, s.cost_usd), (false, None));
        assert_eq!(s.reason.as_deref(), Some("NotImplementedError: no"));
    }

    #[test]
    fn the_newest_glibc_an_elf_names_is_found() {
        let mut fake = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0".to_vec();
        assert_eq!(newest_glibc(&fake), Some((2, 34)));
        fake.extend_from_slice(b"GLIBC_2.39\0");
        assert_eq!(newest_glibc(&fake), Some((2, 39)));
        assert_eq!(newest_glibc(b"static"), None);
    }

    #[test]
    fn the_agent_built_here_runs_in_the_image_and_others_are_refused() {
        // The agent this workspace builds (Debian bookworm, like the image).
        let agent = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join(crate::binaries::AGENT_BIN_NAME);
        if agent.is_file() {
            check_agent_binary(&agent).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("not-elf");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(check_agent_binary(&script).unwrap_err().code.code, "E502");
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 183; // EM_AARCH64
        let arm = dir.path().join("arm");
        std::fs::write(&arm, &elf).unwrap();
        assert!(
            check_agent_binary(&arm)
                .unwrap_err()
                .message
                .contains("x86-64")
        );
        elf[18] = 62;
        elf.extend_from_slice(b"GLIBC_2.39\0");
        let newer = dir.path().join("newer");
        std::fs::write(&newer, &elf).unwrap();
        assert!(
            check_agent_binary(&newer)
                .unwrap_err()
                .message
                .contains("2.39")
        );
    }

    /// The agent starts as root and is told the session's user: no wrapper
    /// switches users before it (the agent must stay root to keep its secret,
    /// journal and store from the session; `agent/tests/it/session_user.rs`).
    #[test]
    fn the_agent_stays_root_and_the_spec_names_the_session_user() {
        let dir = tempfile::tempdir().unwrap();
        let backend = |user: &str| {
            let mut config = crate::config::Config::defaults().modal;
            config.run_as_user = user.into();
            ModalBackend::new(
                dir.path().to_path_buf(),
                "coord-1".into(),
                config,
                crate::plan::AgentSettings::default(),
            )
        };
        assert_eq!(
            backend("parhelia").session_user().as_deref(),
            Some("parhelia")
        );
        assert_eq!(backend("root").session_user(), None);
        assert_eq!(backend(" ").session_user(), None);
    }

    /// The sandbox's secrets: the Anthropic key's first with its required
    /// key, then `modal.secrets`, then the task's, each once; the GPU list is
    /// the task's, else `modal.gpu`.
    #[test]
    fn secrets_keep_their_order_and_the_gpu_list_falls_back_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::defaults().modal;
        config.secrets = vec!["shared".into(), "anthropic-api-key".into()];
        config.gpu = vec!["L4".into()];
        let backend = ModalBackend::new(
            dir.path().to_path_buf(),
            "coord-1".into(),
            config,
            crate::plan::AgentSettings::default(),
        );
        let secrets = backend.sandbox_secrets(&["github".into(), "shared".into()]);
        assert_eq!(
            serde_json::Value::from(secrets),
            json!([
                {"name": "anthropic-api-key", "required_keys": ["ANTHROPIC_API_KEY"]},
                {"name": "shared"},
                {"name": "github"},
            ])
        );
        assert_eq!(backend.gpu_choices(Some("A100,A10G")), ["A100", "A10G"]);
        assert_eq!(backend.gpu_choices(None), ["L4"]);
        assert_eq!(backend.gpu_choices(Some(" ")), ["L4"]);
    }
}
