//! The `local` backend: the agent runs as a detached local process, the
//! "volume" is a directory in the state directory, and the endpoint is
//! loopback.
//!
//! Launch: copy the workspace into `sessions/<sid>/workspace/`, create the
//! volume, config and runtime directories, write `containers/<cid>/spec.json`
//! (no secret), then start `parhelia-agent run --spec … --label
//! parhelia.coordinator=<id>` in its own session (setsid) with stdio going to
//! `containers/<cid>/runtime/agent.log`. The agent is not a child that dies
//! with the coordinator or the CLI.
//!
//! Detaching without `unsafe`: the agent is started through the `parhelia`
//! binary's hidden `internal-detach` command, which calls `setsid()` and then
//! `exec`s the agent, so the process id we get is the agent's.
//!
//! Isolation: with bubblewrap the spec carries a `sandbox` (see
//! [`super::isolation::sandbox_spec`]) and the agent — itself unconfined, holding
//! the secret it reads from stdin — runs Claude Code's tmux server inside it;
//! without it, Claude Code runs with the coordinator's user and sees the whole
//! file system, and only its environment is cleared down to what it needs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::isolation::{self, Isolation};
use super::local_home;
use super::unit;
use super::workspace_copy::copy_tree_reporting;
use super::{Backend, ContainerHandle, Endpoint, LaunchRequest, ObservedContainer};
use crate::binaries::resolve_agent_bin;
use crate::error::coded;
use crate::error_codes;
use crate::plan::{self, LocalLayout};
use crate::spec::AgentRuntimeInfo;

/// The label every agent we start carries on its command line.
pub const LABEL_KEY: &str = "parhelia.coordinator";

/// Environment variables the coordinator passes on from its own
/// environment when the request does not carry them.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "RUST_LOG", "LANG"];

pub struct LocalBackend {
    state_root: PathBuf,
    coordinator_id: String,
    /// The executable that runs `internal-detach` (normally `parhelia` itself).
    launcher: PathBuf,
    endpoint_timeout: Duration,
    timing: plan::AgentSettings,
    /// Exit statuses of agents this process started and saw exit.
    exited: Arc<Mutex<HashMap<String, String>>>,
    /// Whether each agent this process started has exited (its reaper says so):
    /// what [`Backend::exit_signal`] waits on for them.
    exits: Arc<Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>>,
    /// Containers this process is launching (`None`) or launched at (`Some`): their
    /// unit exists before their agent joins it (after the workspace copy, in the
    /// detached helper), so the left-over scan must not take the empty unit for a
    /// dead one and remove it under the launch.
    launching: Arc<Mutex<HashMap<String, Option<std::time::Instant>>>>,
    /// Directories outside the state directory that hold secrets (a custom
    /// database location): hidden from sandboxes like the state directory.
    private_dirs: Vec<PathBuf>,
    /// The left-over scan looks and never removes (`doctor`): only the
    /// coordinator, which alone launches, knows which empty units are launching.
    read_only: bool,
}

impl LocalBackend {
    pub fn new(state_root: PathBuf, coordinator_id: String, launcher: PathBuf) -> Self {
        Self {
            state_root,
            coordinator_id,
            launcher,
            endpoint_timeout: Duration::from_secs(30),
            timing: plan::AgentSettings::default(),
            exited: Arc::default(),
            exits: Arc::default(),
            launching: Arc::default(),
            private_dirs: Vec::new(),
            read_only: false,
        }
    }

    /// A backend that only looks (`doctor`, in a process that is not the
    /// coordinator): its left-over scan removes nothing. Another process's
    /// scan used to remove the empty unit of a container the coordinator was
    /// launching, and the agent then failed to join it (E502).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    pub fn with_endpoint_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint_timeout = timeout;
        self
    }

    /// Also hide these directories from every sandbox (see
    /// [`isolation::db_private_dir`]).
    pub fn with_private_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.private_dirs = dirs;
        self
    }

    pub fn with_agent_settings(mut self, timing: plan::AgentSettings) -> Self {
        self.timing = timing;
        self
    }

    pub fn label(&self) -> String {
        format!("{LABEL_KEY}={}", self.coordinator_id)
    }

    fn layout(&self, session_id: &str, container_id: &str) -> LocalLayout {
        plan::local_layout(&self.state_root, session_id, container_id)
    }

    fn container_runtime_dir(&self, container_id: &str) -> PathBuf {
        self.state_root
            .join("containers")
            .join(container_id)
            .join("runtime")
    }

    fn read_runtime_info(&self, container_id: &str) -> Option<AgentRuntimeInfo> {
        let path = self.container_runtime_dir(container_id).join("agent.json");
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Our agent is running as `pid`: the process exists, is not a zombie,
    /// and its command line names the agent and carries our label.
    fn is_our_agent(&self, pid: u32) -> bool {
        process_matches(pid, &self.label())
    }

    /// Ends the private tmux server of a container whose agent is gone.
    /// Only the agent's own socket is addressed, never the user's tmux.
    async fn kill_leftover_tmux(&self, container_id: &str) {
        let Some(info) = self.read_runtime_info(container_id) else {
            return;
        };
        if self.is_our_agent(info.pid) {
            return;
        }
        let socket = info.tmux_socket.clone().unwrap_or_else(|| {
            info.socket_dir
                .clone()
                .unwrap_or_else(|| self.container_runtime_dir(container_id))
                .join("tmux")
                .join("tmux.sock")
        });
        if !socket.exists() {
            return;
        }
        let killed = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .arg("kill-server")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if killed {
            tracing::info!(container_id, socket = %socket.display(), "ended the tmux server a dead agent left behind");
        }
    }

    fn exit_status_of(&self, container_id: &str) -> Option<String> {
        self.exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .cloned()
    }
}

/// What an agent command line says: `… parhelia-agent run --spec S
/// --label parhelia.coordinator=ID …` (possibly behind `bwrap … --` or an
/// interpreter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCommandLine {
    /// Where the agent program appears (0: it is the program itself; larger
    /// for a wrapper such as bwrap or a shell running a script).
    pub agent_arg_index: usize,
    pub spec: Option<PathBuf>,
    /// The value of the `parhelia.coordinator` label, if any.
    pub coordinator_label: Option<String>,
}

/// Parses a NUL-separated `/proc/<pid>/cmdline` (pure). `None` unless some
/// argument is a program named `parhelia-agent` followed by `run`.
pub fn parse_agent_cmdline(cmdline: &[u8]) -> Option<AgentCommandLine> {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let agent_arg_index = args.iter().position(|a| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| n == crate::binaries::AGENT_BIN_NAME)
    })?;
    let rest = &args[agent_arg_index + 1..];
    if rest.first().map(String::as_str) != Some("run") {
        return None;
    }
    let mut spec = None;
    let mut coordinator_label = None;
    let mut i = 1;
    while i < rest.len() {
        let (flag, value) = match rest[i].split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (rest[i].as_str(), rest.get(i + 1).cloned()),
        };
        let consumed = if rest[i].contains('=') && rest[i].starts_with("--") {
            1
        } else {
            2
        };
        match (flag, value) {
            ("--spec", Some(v)) => spec = Some(PathBuf::from(v)),
            ("--label", Some(v)) => {
                if let Some(id) = v.strip_prefix(&format!("{LABEL_KEY}=")) {
                    coordinator_label = Some(id.to_string());
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += consumed;
    }
    Some(AgentCommandLine {
        agent_arg_index,
        spec,
        coordinator_label,
    })
}

fn read_cmdline(pid: u32) -> Option<AgentCommandLine> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    parse_agent_cmdline(&cmdline)
}

/// Reads `/proc/<pid>/cmdline` and checks it is a live agent with `label`
/// (`parhelia.coordinator=<id>`). A zombie has an empty command line.
pub fn process_matches(pid: u32, label: &str) -> bool {
    read_cmdline(pid).is_some_and(|c| {
        c.coordinator_label
            .is_some_and(|id| format!("{LABEL_KEY}={id}") == label)
    })
}

/// Every live process with an agent command line carrying the label
/// `parhelia.coordinator=<coordinator_id>`: `(pid, command line)`.
pub fn scan_labelled_agents(coordinator_id: &str) -> Vec<(u32, AgentCommandLine)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(cmdline) = read_cmdline(pid)
            && cmdline.coordinator_label.as_deref() == Some(coordinator_id)
        {
            found.push((pid, cmdline));
        }
    }
    found.sort_by_key(|(pid, _)| *pid);
    found
}

/// The identity a spec file gives a container (read leniently: any version).
fn spec_identity(spec: &Path) -> Option<(String, String, PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(spec).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
    Some((
        field("container_id")?,
        field("session_id").unwrap_or_default(),
        PathBuf::from(field("runtime_dir")?),
        PathBuf::from(field("volume_dir")?),
    ))
}

/// A container's unit: its record, else (no record) whatever this host shows of
/// it — its cgroup under our parent, and the processes carrying its marker.
fn unit_of(state_root: &Path, coordinator_id: &str, container_id: &str) -> unit::UnitRecord {
    let dir = state_root.join("containers").join(container_id);
    if unit::safe_name(container_id)
        && let Some(record) = unit::read_record(&dir, coordinator_id, container_id)
    {
        return record;
    }
    let cgroup = unit::unit_dirs_on_host(coordinator_id).remove(container_id);
    unit::UnitRecord {
        version: unit::RECORD_VERSION,
        kind: match (&cgroup, unit::host()) {
            (Some(_), unit::CgroupHost::V2 { .. }) => unit::UnitKind::CgroupV2,
            (Some(_), _) => unit::UnitKind::CgroupV1,
            (None, _) => unit::UnitKind::ProcessTree,
        },
        coordinator_id: coordinator_id.to_string(),
        container_id: container_id.to_string(),
        session_id: String::new(),
        cgroups: cgroup.into_iter().collect(),
        marker: unit::marker_value(coordinator_id, container_id),
        cpu: None,
        memory_mb: None,
        fallback_reason: Some("no unit record".into()),
    }
}

/// Left-over units of this coordinator (see [`Backend::leftover_units`]): recorded
/// units, cgroups under our parent with no record, and marked processes with
/// neither; a unit holding our live agent, or one whose launch is in flight in
/// this process (`launching`: id → in flight), is not left over. Empty cgroups of
/// recorded units whose agent is gone are removed on the way, unless launched a
/// moment ago (the agent joins its unit after the launch returns).
fn scan_leftovers(
    state_root: &Path,
    coordinator_id: &str,
    label: &str,
    launching: &dyn Fn(&str) -> Option<bool>,
    read_only: bool,
) -> Vec<super::LeftoverUnit> {
    use std::collections::BTreeSet;
    let mut markers = unit::scan_markers(coordinator_id);
    let mut candidates: std::collections::BTreeMap<String, (unit::UnitRecord, bool)> =
        std::collections::BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(state_root.join("containers")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !unit::safe_name(&name) {
                continue;
            }
            if let Some(record) = unit::read_record(&entry.path(), coordinator_id, &name) {
                candidates.insert(name, (record, true));
            }
        }
    }
    let on_host: Vec<String> = unit::unit_dirs_on_host(coordinator_id)
        .into_keys()
        .collect();
    for container_id in on_host
        .into_iter()
        .chain(markers.keys().cloned().collect::<Vec<_>>())
    {
        if let std::collections::btree_map::Entry::Vacant(slot) = candidates.entry(container_id) {
            let record = unit_of(state_root, coordinator_id, slot.key());
            slot.insert((record, false));
        }
    }
    let mut found = Vec::new();
    for (container_id, (record, recorded)) in candidates {
        // Asked at each decision, not from a list taken before the scan: a launch
        // that began while this scan read the host is in the map before its unit
        // exists, so a unit the scan saw is never one whose launch it missed.
        if launching(&container_id) == Some(true) {
            // Its launch is in flight: nothing in it is left over yet.
            continue;
        }
        let mut pids: BTreeSet<u32> = record
            .cgroups
            .first()
            .map(|d| unit::cgroup_members(d))
            .unwrap_or_default();
        pids.extend(markers.remove(&container_id).unwrap_or_default());
        pids.retain(|p| Path::new(&format!("/proc/{p}/cmdline")).exists());
        if pids.iter().any(|p| process_matches(*p, label)) {
            continue;
        }
        let launch = launching(&container_id);
        if launch == Some(true) {
            // Its launch began during this scan: the launcher in it is not an
            // agent yet (it joins, then becomes one), and nothing is left over.
            continue;
        }
        if pids.is_empty() {
            // Launched a moment ago, its agent may not have joined yet: kept.
            if launch.is_none() && !read_only {
                unit::remove_unit_dirs(&record);
            }
            continue;
        }
        found.push(super::LeftoverUnit {
            container_id,
            session_id: record.session_id.clone(),
            kind: record.kind.as_str().to_string(),
            pids: pids.into_iter().collect(),
            recorded,
        });
    }
    found
}

/// Stops every process of a container's unit (see [`Backend::hold_unit`]) and
/// says where its workspace and store are (from its spec).
fn hold(
    state_root: &Path,
    coordinator_id: &str,
    label: &str,
    container_id: &str,
) -> Result<super::UnitHold> {
    let record = unit_of(state_root, coordinator_id, container_id);
    let agent_runs =
        |pids: &std::collections::BTreeSet<u32>| pids.iter().any(|p| process_matches(*p, label));
    if agent_runs(&unit::members(&record)) {
        anyhow::bail!("the agent of {container_id} is running: its processes are not left over");
    }
    let held = unit::freeze(&record, &std::collections::BTreeSet::new());
    if agent_runs(&held) {
        // A launch raced the scan: let everything go on.
        for pid in &held {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        anyhow::bail!("the agent of {container_id} is running: its processes are not left over");
    }
    let spec_path = state_root
        .join("containers")
        .join(container_id)
        .join("spec.json");
    let spec: Option<serde_json::Value> = std::fs::read(&spec_path)
        .ok()
        .filter(|b| b.len() < (4 << 20))
        .and_then(|b| serde_json::from_slice(&b).ok());
    let field = |name: &str| {
        spec.as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
    };
    let excludes = spec
        .as_ref()
        .and_then(|v| v.pointer("/checkpoint/excludes"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .take(10_000)
                .collect()
        })
        .unwrap_or_default();
    let session_id = if record.session_id.is_empty() {
        field("session_id")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        record.session_id.clone()
    };
    // The spec is the coordinator's own file; a session id in it must still look
    // like one before it names directories.
    let expected = (!session_id.is_empty() && unit::safe_name(&session_id))
        .then(|| plan::local_layout(state_root, &session_id, container_id));
    Ok(super::UnitHold {
        kind: record.kind.as_str().to_string(),
        pids: held.into_iter().collect(),
        workspace_dir: expected.as_ref().map(|l| l.workspace_dir.clone()),
        volume_dir: expected.as_ref().map(|l| l.volume_dir.clone()),
        excludes,
        session_id,
        claude_config_dir: expected.as_ref().map(|l| l.claude_config_dir.clone()),
        claude_session_id: spec
            .as_ref()
            .and_then(|v| v.get("claude_session_id"))
            .and_then(|v| v.as_str())
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
            .map(str::to_string),
        spec_path: spec.is_some().then_some(spec_path),
    })
}

/// Bytes of one journal read from a volume at most (a session can write its own
/// journal on Modal): what lies beyond is not read, and shows up as missing seqs.
pub const MAX_JOURNAL_READ_BYTES: u64 = 1 << 30;

/// Reads a journal file from `from_seq` on (see [`Backend::read_journal`]). Bounded:
/// links are not followed, a FIFO does not block, and at most
/// [`MAX_JOURNAL_READ_BYTES`] are read.
pub fn read_journal_file(path: &Path, from_seq: u64) -> Result<Vec<parhelia_proto::Event>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    if meta.len() > MAX_JOURNAL_READ_BYTES {
        tracing::warn!(
            bytes = meta.len(),
            "{}: larger than {MAX_JOURNAL_READ_BYTES} bytes; only its start is read",
            path.display()
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_JOURNAL_READ_BYTES)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    // Lines that are not UTF-8 are damaged lines like any other.
    let text = String::from_utf8_lossy(&bytes);
    let parsed = parse_journal(&text, from_seq);
    // A damaged line is skipped, not fatal: the events after it still count, and
    // the seqs it held become a recorded gap (the caller sees them missing).
    for line in parsed.damaged_lines.iter().take(3) {
        tracing::warn!(
            "{} line {line}: not a journal event; skipped",
            path.display()
        );
    }
    Ok(parsed.events)
}

/// `O_NOFOLLOW | O_NONBLOCK`: a planted link or FIFO is refused, never followed or
/// waited on.
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}

/// What [`parse_journal`] read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedJournal {
    /// The events with `seq >= from_seq`, in file order.
    pub events: Vec<parhelia_proto::Event>,
    /// Numbers (1-based) of complete lines that are not events: skipped.
    pub damaged_lines: Vec<usize>,
}

/// The events of a journal's text with `seq >= from_seq`, in file order: every complete
/// line (a torn last line was never announced), blank lines skipped. A line that is not
/// an event is skipped and its number reported; the seqs it held show up missing.
pub fn parse_journal(text: &str, from_seq: u64) -> ParsedJournal {
    let mut parsed = ParsedJournal::default();
    // Only complete lines: a torn last line was never announced.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    for (number, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<parhelia_proto::Event>(line) {
            Ok(event) if event.seq >= from_seq => parsed.events.push(event),
            Ok(_) => {}
            Err(_) => parsed.damaged_lines.push(number + 1),
        }
    }
    parsed
}

fn private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Writes a file atomically: temp file, fsync, rename.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The last `n` lines of a log file, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<ContainerHandle> {
        let ids = &request.ids;
        // Until the agent had time to join its unit (see `launching`).
        struct Launching(
            Arc<Mutex<HashMap<String, Option<std::time::Instant>>>>,
            String,
        );
        impl Drop for Launching {
            fn drop(&mut self) {
                if let Ok(mut map) = self.0.lock() {
                    map.insert(self.1.clone(), Some(std::time::Instant::now()));
                }
            }
        }
        if let Ok(mut map) = self.launching.lock() {
            map.insert(ids.container_id.clone(), None);
        }
        let _launching = Launching(Arc::clone(&self.launching), ids.container_id.clone());
        let layout = self.layout(&ids.session_id, &ids.container_id);
        for dir in [
            &layout.session_dir,
            &layout.volume_dir,
            &layout.container_dir,
            &layout.claude_config_dir,
            &layout.runtime_dir,
        ] {
            private_dir(dir)?;
        }
        // Limits are real or refused: a GPU only if this host has that one, CPU and
        // memory only in a cgroup we can write (checked before anything runs).
        if let Some(gpu) = &request.resources.gpu {
            crate::budget::refuse_missing_gpu(gpu, &super::capabilities::host_gpus())?;
        }
        // The session's unit, before anything of it runs: every process the agent
        // starts is in it, whatever setsid or double-fork they do.
        let (coordinator_id, container_id, session_id) = (
            self.coordinator_id.clone(),
            ids.container_id.clone(),
            ids.session_id.clone(),
        );
        let (cpu, memory_mb) = (request.resources.cpu, request.resources.memory_mb);
        let session_unit = tokio::task::spawn_blocking(move || {
            unit::create_unit(&coordinator_id, &container_id, &session_id, cpu, memory_mb)
        })
        .await
        .context("creating the session's cgroup panicked")?
        .map_err(|why| {
            coded(
                error_codes::LIMIT_NOT_ENFORCEABLE,
                format!(
                    "the local backend cannot enforce {} here: {why}",
                    crate::budget::describe_cpu_memory(cpu, memory_mb)
                ),
            )
        })?;
        unit::write_record(&layout.container_dir, &session_unit).with_context(|| {
            format!(
                "writing {}",
                layout.container_dir.join(unit::RECORD_FILE).display()
            )
        })?;
        tracing::info!(
            container_id = %ids.container_id,
            unit = session_unit.kind.as_str(),
            cgroups = ?session_unit.cgroups,
            fallback = session_unit.fallback_reason.as_deref().unwrap_or(""),
            "session unit ready"
        );

        match &request.workspace_source {
            Some(source) => {
                let (source, target, exclude, limits, progress) = (
                    source.clone(),
                    layout.workspace_dir.clone(),
                    vec![self.state_root.clone()],
                    request.copy_limits,
                    request.workspace_progress.clone(),
                );
                let stats = tokio::task::spawn_blocking(move || {
                    copy_tree_reporting(&source, &target, &exclude, limits, &|copied| {
                        if let Some(progress) = &progress {
                            (progress.0)(
                                crate::backend::workspace_copy::WorkspaceStage::Copy,
                                copied,
                            );
                        }
                    })
                })
                .await
                .context("the workspace copy panicked")?
                .context("copying the workspace into the session")?;
                tracing::info!(
                    container_id = %ids.container_id,
                    files = stats.files,
                    bytes = stats.bytes,
                    "workspace copied"
                );
            }
            None => private_dir(&layout.workspace_dir)?,
        }

        let mut spec = plan::agent_spec(
            &request.session,
            ids,
            &layout,
            &request.claude_bin,
            request.agent_settings.as_ref().unwrap_or(&self.timing),
        );
        spec.timeout_ms = request
            .resources
            .timeout_seconds
            .map(|s| s.saturating_mul(1000));
        let home = request
            .env
            .get("HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
            .filter(|h| h.is_absolute());
        if request.user_config {
            // The user's Claude Code setup, through the config-sync planner: the agent
            // copies the planned bytes into the session's config dir.
            let source = crate::config_sync::ConfigSource::from_env(
                home.as_deref().unwrap_or(Path::new("/nonexistent")),
                std::env::var_os("CLAUDE_CONFIG_DIR")
                    .map(PathBuf::from)
                    .as_deref(),
            );
            let seed = layout.container_dir.join(local_home::USER_CONFIG_DIR);
            let seed_dir = seed.clone();
            let plan = tokio::task::spawn_blocking(move || {
                local_home::write_user_config(&source, &seed_dir)
            })
            .await
            .context("planning the user's Claude Code setup panicked")??;
            tracing::info!(
                container_id = %ids.container_id,
                files = plan.files.len(),
                withheld = plan.withheld.len(),
                "the user's Claude Code setup planned for the session (credentials withheld)"
            );
            spec.claude_config_seed = Some(seed);
        }
        if request.isolation == Isolation::Bubblewrap {
            let path_var = request
                .env
                .get("PATH")
                .map(std::ffi::OsString::from)
                .or_else(|| std::env::var_os("PATH"));
            let mut sandbox = isolation::sandbox_spec(
                &self.state_root,
                &self.private_dirs,
                home.as_deref(),
                path_var.as_deref(),
            );
            // The session's own writable home, mounted at the user's home path.
            if let Some(home) = home.clone() {
                let private = layout.session_dir.join(local_home::HOME_DIR);
                let dotfiles = request.user_config;
                let (spec_part, report) = tokio::task::spawn_blocking(move || {
                    let report =
                        local_home::apply_private_home(&mut sandbox, &home, &private, dotfiles);
                    (sandbox, report)
                })
                .await
                .context("preparing the session's home panicked")?;
                let report = report?;
                tracing::info!(
                    container_id = %ids.container_id,
                    copied = ?report.copied,
                    withheld = ?report.withheld.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    tools = report.tools.len(),
                    shims = report.shims.len(),
                    masked = report.masked.len(),
                    "the session's private home is ready"
                );
                spec.sandbox = Some(spec_part);
            } else {
                spec.sandbox = Some(sandbox);
            }
        }
        // Unconfined, the session still gets its own home: the same directory, made
        // the same way, as its `HOME` (nothing can be mounted at the user's path).
        let unconfined_home = if request.isolation == Isolation::Bubblewrap {
            None
        } else {
            let private = layout.session_dir.join(local_home::HOME_DIR);
            let (home, dotfiles, dir) = (home.clone(), request.user_config, private.clone());
            let report = tokio::task::spawn_blocking(move || {
                local_home::prepare_unconfined_home(home.as_deref(), &dir, dotfiles)
            })
            .await
            .context("preparing the session's home panicked")??;
            tracing::info!(
                container_id = %ids.container_id,
                copied = ?report.copied,
                withheld = ?report.withheld.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "the session's private home is ready (unconfined: HOME points at it)"
            );
            Some(private)
        };
        write_atomically(&layout.spec_path, &serde_json::to_vec_pretty(&spec)?)?;

        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let agent_bin = resolve_agent_bin(
            request.agent_bin.as_deref(),
            std::env::current_exe().ok().as_deref(),
            std::env::var_os("PATH").as_deref(),
            &cwd,
        )?;

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&layout.agent_log_path)
            .with_context(|| format!("opening {}", layout.agent_log_path.display()))?;
        // The agent runs outside the sandbox (it holds the secret and writes the
        // journal and the checkpoint store); it starts Claude Code's tmux server inside
        // one when the spec says so. The secret goes through a pipe on stdin, never the
        // environment (which /proc would show to any process of this user).
        let mut command = tokio::process::Command::new(&self.launcher);
        command.arg("internal-detach");
        for procs in unit::procs_files(&session_unit) {
            command.arg("--join-cgroup").arg(procs);
        }
        command
            .arg("--")
            .arg(&agent_bin)
            .arg("run")
            .arg("--spec")
            .arg(&layout.spec_path)
            .arg("--label")
            .arg(self.label())
            .arg("--secret-stdin")
            .current_dir(&layout.workspace_dir)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, value) in &request.env {
            if !key.starts_with("PARHELIA_") {
                command.env(key, value);
            }
        }
        for key in INHERITED_ENV {
            if !request.env.contains_key(*key)
                && let Some(value) = std::env::var_os(key)
            {
                command.env(key, value);
            }
        }
        if let Some(private) = &unconfined_home {
            // The agent hands its environment to Claude Code; it reads no HOME itself.
            command.env("HOME", private);
        }
        // The unit's marker: the agent passes it on to its tmux server, so every
        // process of the session carries it (how a process-tree unit, and `cleanup`,
        // find them).
        command.env(unit::UNIT_ENV, &session_unit.marker);

        let mut child = command.spawn().map_err(|e| {
            coded(
                error_codes::AGENT_FAILED_TO_START,
                format!("cannot start {}: {e}", agent_bin.display()),
            )
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let line = format!("{}\n", request.secret.expose());
            stdin.write_all(line.as_bytes()).await.map_err(|e| {
                coded(
                    error_codes::AGENT_FAILED_TO_START,
                    format!("cannot hand the session secret to the agent: {e}"),
                )
            })?;
            drop(stdin);
        }
        let pid = child.id();
        tracing::info!(
            container_id = %ids.container_id,
            pid,
            agent = %agent_bin.display(),
            isolation = request.isolation.as_str(),
            "agent started"
        );

        // Reap the agent when it exits, and remember how it ended so
        // `endpoint()` can fail fast instead of waiting out its deadline.
        let exited = Arc::clone(&self.exited);
        let container_id = ids.container_id.clone();
        let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(container_id.clone(), exit_rx);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            tracing::info!(%container_id, %status, "agent exited");
            // An agent that ended its session left an empty unit: remove it. One
            // that still holds processes (a killed agent's) stays for the reconciler.
            unit::remove_unit_dirs(&session_unit);
            exited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(container_id, status);
            exit_tx.send_replace(true);
        });

        Ok(ContainerHandle {
            container_id: ids.container_id.clone(),
            pid,
            workspace_dir: layout.workspace_dir,
            volume_dir: layout.volume_dir,
            remote_id: None,
        })
    }

    /// Scans the process table for agents carrying our label (wherever
    /// their files are), one container per spec file. Under bubblewrap both
    /// `bwrap` and the agent carry the command line; the agent (named in
    /// `agent.json`, else the innermost) is the container's process.
    async fn list(&self) -> Result<Vec<ObservedContainer>> {
        let mut by_spec: std::collections::BTreeMap<PathBuf, Vec<(u32, AgentCommandLine)>> =
            std::collections::BTreeMap::new();
        for (pid, cmdline) in scan_labelled_agents(&self.coordinator_id) {
            let key = cmdline.spec.clone().unwrap_or_default();
            by_spec.entry(key).or_default().push((pid, cmdline));
        }
        let mut observed = Vec::new();
        for (spec, processes) in by_spec {
            let identity = spec_identity(&spec);
            let container_id = match &identity {
                Some((id, ..)) => id.clone(),
                // No readable spec: the directory it lives in names it.
                None => match spec.parent().and_then(Path::file_name) {
                    Some(name) => name.to_string_lossy().into_owned(),
                    None => continue,
                },
            };
            let info = identity
                .as_ref()
                .and_then(|(_, _, runtime, _)| {
                    std::fs::read_to_string(runtime.join("agent.json")).ok()
                })
                .and_then(|text| serde_json::from_str::<AgentRuntimeInfo>(&text).ok());
            let announced = info
                .as_ref()
                .filter(|i| processes.iter().any(|(pid, _)| *pid == i.pid));
            let pid = match announced {
                Some(info) => info.pid,
                None => processes
                    .iter()
                    .min_by_key(|(pid, c)| (c.agent_arg_index, *pid))
                    .map(|(pid, _)| *pid)
                    .expect("a group has a process"),
            };
            observed.push(ObservedContainer {
                container_id,
                session_id: identity.map(|(_, session, ..)| session).unwrap_or_default(),
                pid: Some(pid),
                endpoint: announced.map(AgentRuntimeInfo::endpoint_uri),
                coordinator_label: self.coordinator_id.clone(),
            });
        }
        observed.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(observed)
    }

    async fn terminate(&self, container_id: &str) -> Result<()> {
        let listed = self.list().await?;
        let Some(pid) = listed
            .iter()
            .find(|c| c.container_id == container_id)
            .and_then(|c| c.pid)
        else {
            // No agent: a container that died (SIGKILL) may have left its
            // private tmux server, and Claude Code in it, running. A real
            // container's death takes those with it; here we must.
            self.kill_leftover_tmux(container_id).await;
            return Ok(());
        };
        // Checked again right before the signal: the pid must still be our agent.
        if !self.is_our_agent(pid) {
            return Ok(());
        }
        tracing::info!(container_id, pid, "sending SIGTERM to the agent");
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("signalling the agent of {container_id}")),
        }
    }

    async fn leftover_units(&self) -> Result<Vec<super::LeftoverUnit>> {
        let (root, coordinator_id, label) = (
            self.state_root.clone(),
            self.coordinator_id.clone(),
            self.label(),
        );
        // Units of launches in flight, or younger than the agent's time to join: kept.
        // Looked up live, when the scan decides about a unit it found (a list taken
        // before the scan missed launches that began during it, and their empty
        // units were removed before the agent joined: E502 under load).
        let grace = self.endpoint_timeout * 2;
        if let Ok(mut map) = self.launching.lock() {
            map.retain(|_, at| at.is_none_or(|at| at.elapsed() < grace));
        }
        let launching = Arc::clone(&self.launching);
        let read_only = self.read_only;
        tokio::task::spawn_blocking(move || {
            let state = |id: &str| -> Option<bool> {
                let map = launching.lock().unwrap_or_else(|p| p.into_inner());
                match map.get(id) {
                    Some(None) => Some(true),
                    Some(Some(at)) if at.elapsed() < grace => Some(false),
                    _ => None,
                }
            };
            scan_leftovers(&root, &coordinator_id, &label, &state, read_only)
        })
        .await
        .context("scanning for left-over session processes panicked")
    }

    async fn hold_unit(&self, container_id: &str) -> Result<super::UnitHold> {
        let (root, coordinator_id, label, container_id) = (
            self.state_root.clone(),
            self.coordinator_id.clone(),
            self.label(),
            container_id.to_string(),
        );
        tokio::task::spawn_blocking(move || hold(&root, &coordinator_id, &label, &container_id))
            .await
            .context("holding a session's processes panicked")?
    }

    async fn left_behind_spec(&self, container_id: &str) -> Option<PathBuf> {
        let (root, coordinator_id, container_id) = (
            self.state_root.clone(),
            self.coordinator_id.clone(),
            container_id.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            if !unit::safe_name(&container_id) {
                return None;
            }
            let record = unit_of(&root, &coordinator_id, &container_id);
            if !unit::members(&record).is_empty() {
                // Processes still run: the left-over path holds them first.
                return None;
            }
            let spec = root
                .join("containers")
                .join(&container_id)
                .join("spec.json");
            spec.is_file().then_some(spec)
        })
        .await
        .ok()
        .flatten()
    }

    async fn end_unit(&self, container_id: &str, _hold: &super::UnitHold) -> Result<Vec<u32>> {
        let (root, coordinator_id, container_id) = (
            self.state_root.clone(),
            self.coordinator_id.clone(),
            container_id.to_string(),
        );
        let survivors = tokio::task::spawn_blocking(move || {
            let record = unit_of(&root, &coordinator_id, &container_id);
            unit::kill(&record, &std::collections::BTreeSet::new())
        })
        .await
        .context("ending a session's processes panicked")?;
        Ok(survivors.into_iter().collect())
    }

    async fn read_journal(
        &self,
        container_id: &str,
        _session_id: &str,
        from_seq: u64,
    ) -> Result<Vec<parhelia_proto::Event>> {
        let spec = self
            .state_root
            .join("containers")
            .join(container_id)
            .join("spec.json");
        let Some((_, _, _, volume_dir)) = spec_identity(&spec) else {
            return Ok(Vec::new());
        };
        let path = volume_dir
            .join("journal")
            .join(format!("{container_id}.jsonl"));
        tokio::task::spawn_blocking(move || read_journal_file(&path, from_seq))
            .await
            .context("reading the journal panicked")?
    }

    /// The agent's exit: its reaper's word for an agent this process started, else a
    /// pidfd on the agent's process (from `agent.json`, checked to be our agent after
    /// the pidfd is open, so a reused pid is never waited on). `None` when neither
    /// can be had (no `agent.json` yet, no pidfd on this kernel).
    async fn exit_signal(&self, container_id: &str) -> Option<super::ExitSignal> {
        let own = self
            .exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(container_id)
            .cloned();
        if let Some(mut exited) = own {
            return Some(Box::pin(async move {
                // The reaper gone without a word is an exit too.
                let _ = exited.wait_for(|gone| *gone).await;
            }));
        }
        let info = self.read_runtime_info(container_id)?;
        if info.container_id != container_id && !info.container_id.is_empty() {
            return None;
        }
        let pid = rustix::process::Pid::from_raw(i32::try_from(info.pid).ok()?)?;
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            // No such process: it has exited.
            Err(rustix::io::Errno::SRCH) => return Some(Box::pin(std::future::ready(()))),
            Err(_) => return None,
        };
        if !self.is_our_agent(info.pid) {
            // Not (or no longer) our agent: nothing of ours to wait for.
            return Some(Box::pin(std::future::ready(())));
        }
        // A pidfd becomes readable when its process exits. Waited for on a blocking
        // thread in one-second polls, so a waiter that gives up frees it soon.
        let given_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct GiveUp(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for GiveUp {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let give_up = GiveUp(Arc::clone(&given_up));
        let waited = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsFd;
            while !given_up.load(std::sync::atomic::Ordering::SeqCst) {
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                    // Readable (exited), or the pidfd cannot be polled: look again by listing.
                    _ => return,
                }
            }
        });
        Some(Box::pin(async move {
            let _give_up = give_up;
            let _ = waited.await;
        }))
    }

    async fn endpoint(&self, container_id: &str) -> Result<Endpoint> {
        let started = Instant::now();
        let log = self.container_runtime_dir(container_id).join("agent.log");
        loop {
            if let Some(info) = self.read_runtime_info(container_id)
                && (info.container_id.is_empty() || info.container_id == container_id)
            {
                if self.is_our_agent(info.pid) {
                    return Ok(Endpoint {
                        uri: info.endpoint_uri(),
                        pid: Some(info.pid),
                    });
                }
                if self.exit_status_of(container_id).is_some()
                    || started.elapsed() > Duration::from_secs(2)
                {
                    return Err(coded(
                        error_codes::AGENT_UNREACHABLE,
                        format!(
                            "the agent of {container_id} (pid {}) is not running",
                            info.pid
                        ),
                    ));
                }
            }
            if let Some(status) = self.exit_status_of(container_id) {
                let tail = log_tail(&log, 3);
                let mut message = format!(
                    "the agent of {container_id} exited ({status}) before it was ready; log: {}",
                    log.display()
                );
                if !tail.is_empty() {
                    message.push_str(&format!("\n{tail}"));
                }
                // An agent that cannot write its journal or runtime files on a full
                // disk did not fail to start for its own reasons: say what happened.
                if crate::disk_guard::free_bytes(&self.state_root)
                    .is_some_and(|free| free < crate::disk_guard::LOW_BYTES)
                {
                    return Err(coded(
                        error_codes::DISK_FULL,
                        format!(
                            "no space left on the disk of {}: {message}",
                            self.state_root.display()
                        ),
                    ));
                }
                return Err(coded(error_codes::AGENT_FAILED_TO_START, message));
            }
            if started.elapsed() > self.endpoint_timeout {
                return Err(coded(
                    error_codes::AGENT_FAILED_TO_START,
                    format!(
                        "the agent of {container_id} did not announce its endpoint within {}s; log: {}",
                        self.endpoint_timeout.as_secs(),
                        log.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The body of `parhelia internal-detach [--join-cgroup PROCS]… -- PROGRAM
/// ARGS…`: join the session's unit (each `cgroup.procs` given), leave the
/// caller's session and process group, then become `PROGRAM`. A unit that cannot
/// be joined starts nothing: a process outside it could outlive its agent.
pub fn detach_and_exec(join_cgroup: &[PathBuf], command: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("parhelia internal-detach: no program given");
        return 2;
    };
    for procs in join_cgroup {
        if let Err(e) = std::fs::write(procs, std::process::id().to_string()) {
            eprintln!(
                "parhelia internal-detach: cannot join the session's cgroup {}: {e}",
                procs.display()
            );
            return 1;
        }
    }
    if let Err(e) = nix::unistd::setsid() {
        eprintln!("parhelia internal-detach: setsid failed: {e}");
        return 1;
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "parhelia internal-detach: cannot exec {}: {err}",
        Path::new(program).display()
    );
    127
}

#[cfg(test)]
mod journal_read_tests {
    use super::*;

    fn line(seq: u64) -> String {
        format!(
            "{}\n",
            serde_json::to_string(&parhelia_proto::Event {
                seq,
                ts_ms: 1,
                kind: Some(parhelia_proto::event::Kind::StopRequested(
                    parhelia_proto::StopRequested { reason: "x".into() }
                )),
            })
            .unwrap()
        )
    }

    /// A journal the session wrote on its volume is read boundedly: a link to
    /// `/dev/zero` or a FIFO is refused at once (no endless read, no hang), and bytes
    /// that are not UTF-8 damage only their own line.
    #[test]
    fn a_hostile_journal_file_is_refused_or_read_around() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("zero.jsonl");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read_journal_file(&link, 1).is_err());
        let fifo = dir.path().join("fifo.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_journal_file(&fifo, 1).is_err());

        let mixed = dir.path().join("mixed.jsonl");
        let mut bytes = line(1).into_bytes();
        bytes.extend_from_slice(b"\xff\xfe not json\n");
        bytes.extend_from_slice(line(3).as_bytes());
        std::fs::write(&mixed, bytes).unwrap();
        let seqs: Vec<u64> = read_journal_file(&mixed, 1)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 3]);
        assert!(
            read_journal_file(&dir.path().join("missing.jsonl"), 1)
                .unwrap()
                .is_empty()
        );
    }
}

#[cfg(test)]
mod leftover_scan_tests {
    use super::*;

    /// The scan decides about an empty unit from the launch state *at that
    /// moment*: a unit whose launch is in flight (or ended within the grace the
    /// agent has to join it) is kept and not reported; only a unit nobody is
    /// launching is removed. The lookup is live (a closure over the backend's map),
    /// not a list taken before the scan: with the list, a launch that began while
    /// the scan read the host had its empty unit removed before its agent joined
    /// (E502 "cannot join the session's cgroup", seen under load in chaos and CI).
    #[test]
    fn an_empty_units_fate_follows_its_launch_state_at_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let coordinator_id = format!("coord-{}", crate::ids::random_hex(4));
        let container_id = format!("ctr-{}", crate::ids::random_hex(4));
        let record = match unit::create_unit(&coordinator_id, &container_id, "sess-1", None, None) {
            Ok(record) if !record.cgroups.is_empty() => record,
            other => {
                eprintln!("SKIPPED: no writable cgroup on this host ({other:?})");
                return;
            }
        };
        let container_dir = dir.path().join("containers").join(&container_id);
        std::fs::create_dir_all(&container_dir).unwrap();
        unit::write_record(&container_dir, &record).unwrap();
        let membership = record.cgroups[0].clone();
        let scan = |state: Option<bool>| {
            scan_leftovers(
                dir.path(),
                &coordinator_id,
                "no-such-label",
                &|id: &str| (id == container_id).then_some(state).flatten(),
                false,
            )
        };

        for (state, what) in [(Some(true), "in flight"), (Some(false), "just launched")] {
            assert!(
                scan(state).is_empty(),
                "an empty unit {what} is not left over"
            );
            assert!(
                membership.exists(),
                "the unit of a launch {what} was removed"
            );
        }
        assert!(scan(None).is_empty(), "an empty unit holds nothing to end");
        assert!(
            !membership.exists(),
            "the empty unit of a launch nobody runs stays"
        );
    }
}
