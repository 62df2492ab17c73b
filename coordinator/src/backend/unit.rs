//! A local session's processes as one kill-able unit.
//!
//! The agent's tmux server daemonizes (its own session and process group), so
//! neither the agent's process group nor its process tree holds what a session
//! runs. A unit does, whatever `setsid` or double-fork its members do:
//!
//! - **cgroup** (where the host lets us write one): the launcher joins
//!   `<own cgroup>/parhelia/<coordinator>/<container>` in every hierarchy we use
//!   *before* it execs the agent, so the agent and every descendant are members.
//!   On cgroup v1 that is `pids` (membership), `cpu` and `memory` (limits); on v2
//!   one directory (membership, and `cpu.max`/`memory.max` when the controllers
//!   can be delegated).
//! - **process tree** (fallback): every process whose environment carries
//!   `PARHELIA_UNIT=<coordinator>:<container>` (the launcher sets it on the agent;
//!   the agent passes it on to its tmux server, so Claude Code and its tools
//!   inherit it), plus the private tmux socket. Under bubblewrap
//!   `--die-with-parent` and the sandbox's PID namespace also end the sandbox with
//!   the agent.
//!
//! The record of a unit is `containers/<cid>/unit.json` in the state directory
//! (`docs/formats/unit.md`). Everything read back from it is checked: a cgroup
//! path must lie on a mounted cgroup file system and end in
//! `parhelia/<coordinator>/<container>`.
//!
//! Pure parts (mount and `/proc/<pid>/cgroup` parsing, paths, limit values) are
//! separated from the IO so they can be tested without a cgroup file system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable that marks every process of a local session:
/// `PARHELIA_UNIT=<coordinator id>:<container id>`.
pub const UNIT_ENV: &str = "PARHELIA_UNIT";
/// The unit record's file name in `containers/<cid>/`.
pub const RECORD_FILE: &str = "unit.json";
/// The directory under a process's own cgroup that holds our units.
pub const PARENT_DIR: &str = "parhelia";
/// `cpu.max` / `cpu.cfs_period_us`: 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The largest record read back (it is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 << 10;
/// How deep and how many nested cgroups a unit's members may have created (v1/v2,
/// where they can write cgroupfs at all) are searched for members.
const MAX_NESTED_DEPTH: usize = 8;
const MAX_NESTED_DIRS: usize = 4096;
/// Passes of the stop / kill loops (each pass signals every member it finds; a
/// member that forks between passes is found by the next one).
const SIGNAL_PASSES: usize = 200;

/// The kind of unit a local container has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    CgroupV1,
    CgroupV2,
    /// No writable cgroup: the environment marker and the tmux socket.
    ProcessTree,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::CgroupV1 => "cgroup_v1",
            UnitKind::CgroupV2 => "cgroup_v2",
            UnitKind::ProcessTree => "process_tree",
        }
    }
}

/// `containers/<cid>/unit.json`: what the unit of a local container is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    pub version: u32,
    pub kind: UnitKind,
    pub coordinator_id: String,
    pub container_id: String,
    #[serde(default)]
    pub session_id: String,
    /// Every cgroup directory of the unit; the first is the membership one.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// `PARHELIA_UNIT=<coordinator>:<container>`.
    pub marker: String,
    /// Cores written into the unit (`cpu.max` / `cpu.cfs_quota_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// MiB written into the unit (`memory.max` / `memory.limit_in_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Why the unit is a process tree and not a cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

pub const RECORD_VERSION: u32 = 1;

/// The marker value for a container.
pub fn marker_value(coordinator_id: &str, container_id: &str) -> String {
    format!("{coordinator_id}:{container_id}")
}

/// A name that may be one path component of a cgroup: ids only
/// (`[A-Za-z0-9._-]`, not `.`/`..`, at most 128 bytes).
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One cgroup file system mount (from `/proc/self/mounts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub path: PathBuf,
    pub v2: bool,
    /// v1: the controllers (and `name=…`) of the hierarchy; v2: empty.
    pub controllers: Vec<String>,
}

const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mounts` for cgroup file systems (pure, total).
pub fn parse_mounts(text: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, path, fstype, options, ..] = fields.as_slice() else {
            continue;
        };
        let path = PathBuf::from(unescape_mount_field(path));
        if !path.is_absolute() {
            continue;
        }
        match *fstype {
            "cgroup2" => mounts.push(CgroupMount {
                path,
                v2: true,
                controllers: Vec::new(),
            }),
            "cgroup" => mounts.push(CgroupMount {
                path,
                v2: false,
                controllers: options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                    .map(str::to_string)
                    .collect(),
            }),
            _ => {}
        }
    }
    mounts
}

/// One line of `/proc/<pid>/cgroup`: `id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcCgroup {
    pub controllers: Vec<String>,
    /// Absolute within its hierarchy (`/` for the root).
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup` (pure, total). The v2 line has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            Some(ProcCgroup {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Joins a hierarchy-absolute cgroup path to its mount point; `None` when the path
/// has a `..` or is not absolute (never leaves the mount).
pub fn join_cgroup(mount: &Path, cgroup_path: &str) -> Option<PathBuf> {
    let rel = Path::new(cgroup_path);
    if !rel.is_absolute() {
        return None;
    }
    let mut out = mount.to_path_buf();
    for component in rel.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            _ => return None,
        }
    }
    Some(out)
}

/// Where this process's units go on this host: the own cgroup of each hierarchy
/// we use (units are nested under it, so they stay inside whatever limits the
/// coordinator itself runs under).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupHost {
    V1 {
        /// Membership (the first of `pids`, `freezer`, `cpu`, `memory` mounted).
        membership: PathBuf,
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
    V2 {
        own: PathBuf,
    },
    /// No cgroup file system we can use, and why.
    None(String),
}

/// Decides the layout from the mounts and this process's cgroups (pure). A host
/// with v1 controllers mounted uses v1 (the controllers live there; a hybrid
/// host's `unified` hierarchy has none); a pure v2 host uses v2.
pub fn plan_host(mounts: &[CgroupMount], own: &[ProcCgroup]) -> CgroupHost {
    let own_dir = |controller: &str| -> Option<PathBuf> {
        let mount = mounts
            .iter()
            .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))?;
        let line = own
            .iter()
            .find(|l| l.controllers.iter().any(|c| c == controller))?;
        join_cgroup(&mount.path, &line.path)
    };
    let cpu = own_dir("cpu");
    let memory = own_dir("memory");
    let membership = ["pids", "freezer"]
        .iter()
        .find_map(|c| own_dir(c))
        .or_else(|| cpu.clone())
        .or_else(|| memory.clone());
    if let Some(membership) = membership {
        return CgroupHost::V1 {
            membership,
            cpu,
            memory,
        };
    }
    let v2_mount = mounts.iter().find(|m| m.v2);
    let v2_line = own.iter().find(|l| l.controllers.is_empty());
    match (v2_mount, v2_line) {
        (Some(mount), Some(line)) => match join_cgroup(&mount.path, &line.path) {
            Some(own) => CgroupHost::V2 { own },
            None => CgroupHost::None(format!("unusable cgroup path {:?}", line.path)),
        },
        _ => CgroupHost::None("no cgroup file system is mounted".into()),
    }
}

/// A unit's directory under an own cgroup `base`.
pub fn unit_dir(base: &Path, coordinator_id: &str, container_id: &str) -> PathBuf {
    base.join(PARENT_DIR)
        .join(coordinator_id)
        .join(container_id)
}

/// `cpu.max` (v2) for `cores`: `"<quota> <period>"`; `None` for a value that is
/// not a positive finite number.
pub fn cpu_max_v2(cores: f64) -> Option<String> {
    cpu_quota_us(cores).map(|q| format!("{q} {CPU_PERIOD_US}"))
}

/// `cpu.cfs_quota_us` (v1, with `cpu.cfs_period_us` = [`CPU_PERIOD_US`]): at least
/// 1 ms (the kernel's minimum), at most 1024 cores.
pub fn cpu_quota_us(cores: f64) -> Option<u64> {
    if !cores.is_finite() || cores <= 0.0 || cores > 1024.0 {
        return None;
    }
    Some(((cores * CPU_PERIOD_US as f64).ceil() as u64).max(1000))
}

/// `memory.max` / `memory.limit_in_bytes` for `mib` MiB; `None` for 0 or an
/// overflow.
pub fn memory_bytes(mib: u64) -> Option<u64> {
    if mib == 0 {
        return None;
    }
    mib.checked_mul(1024 * 1024)
}

/// Whether a recorded cgroup directory is one of ours for `container_id`: absolute,
/// no `..`, under a cgroup mount, ending in `parhelia/<coordinator>/<container>`
/// (pure given the mounts).
pub fn recorded_path_is_ours(
    path: &Path,
    mounts: &[CgroupMount],
    coordinator_id: &str,
    container_id: &str,
) -> bool {
    if !path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
    {
        return false;
    }
    if !safe_name(coordinator_id) || !safe_name(container_id) {
        return false;
    }
    let tail: Vec<&std::ffi::OsStr> = path.iter().rev().take(3).collect();
    if tail.len() < 3
        || tail[0] != container_id
        || tail[1] != coordinator_id
        || tail[2] != PARENT_DIR
    {
        return false;
    }
    mounts
        .iter()
        .any(|m| path.starts_with(&m.path) && path != m.path)
}

/// The `PARHELIA_UNIT` value in a NUL-separated `/proc/<pid>/environ` (pure).
pub fn marker_in_environ(environ: &[u8]) -> Option<String> {
    let prefix = format!("{UNIT_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

// ---------------------------------------------------------------------------
// IO

/// This host's layout for this process.
pub fn host() -> CgroupHost {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    plan_host(&parse_mounts(&mounts), &parse_proc_cgroup(&own))
}

fn mounts() -> Vec<CgroupMount> {
    parse_mounts(&std::fs::read_to_string("/proc/self/mounts").unwrap_or_default())
}

/// Whether `--cpu`/`--memory` can be enforced here: `Err` says why not. Probes by
/// creating (and removing) a unit directory and finding the limit files in it.
pub fn limits_enforceable(cpu: bool, memory: bool) -> Result<(), String> {
    if !cpu && !memory {
        return Ok(());
    }
    let probe = format!("probe-{}", std::process::id());
    let created = create_dirs(
        &host(),
        "probe",
        &probe,
        cpu.then_some(1.0),
        memory.then_some(64),
    );
    match created {
        Ok((_, dirs)) => {
            remove_dirs(&dirs);
            Ok(())
        }
        Err(why) => Err(why),
    }
}

fn mkdir_all(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Creates the unit's cgroup directories and writes its limits. `Ok((kind, dirs))`
/// (membership first); `Err` when no cgroup can be made, or a limit asked for cannot
/// be written (everything created is removed again).
fn create_dirs(
    host: &CgroupHost,
    coordinator_id: &str,
    container_id: &str,
    cpu: Option<f64>,
    memory_mb: Option<u64>,
) -> Result<(UnitKind, Vec<PathBuf>), String> {
    if !safe_name(coordinator_id) || !safe_name(container_id) {
        return Err(format!(
            "{coordinator_id:?}/{container_id:?} is not a safe cgroup name"
        ));
    }
    let mut dirs = Vec::new();
    let result = (|| match host {
        CgroupHost::None(why) => Err(why.clone()),
        CgroupHost::V1 {
            membership,
            cpu: cpu_base,
            memory: memory_base,
        } => {
            let dir = unit_dir(membership, coordinator_id, container_id);
            mkdir_all(&dir)?;
            dirs.push(dir);
            for (base, asked) in [
                (cpu_base, cpu.is_some()),
                (memory_base, memory_mb.is_some()),
            ] {
                match base {
                    Some(base) if base != membership => {
                        let dir = unit_dir(base, coordinator_id, container_id);
                        // Joined whenever it can be made; required only for a limit.
                        match mkdir_all(&dir) {
                            Ok(()) => dirs.push(dir),
                            Err(why) if asked => return Err(why),
                            Err(_) => {}
                        }
                    }
                    Some(_) => {}
                    None if asked => {
                        return Err("the cgroup controller for this limit is not mounted".into());
                    }
                    None => {}
                }
            }
            if let Some(cores) = cpu {
                let base = cpu_base.as_ref().expect("checked above");
                let dir = unit_dir(base, coordinator_id, container_id);
                let quota = cpu_quota_us(cores).ok_or(format!("invalid --cpu {cores}"))?;
                write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            if let Some(mib) = memory_mb {
                let base = memory_base.as_ref().expect("checked above");
                let dir = unit_dir(base, coordinator_id, container_id);
                let bytes = memory_bytes(mib).ok_or(format!("invalid --memory {mib}"))?;
                write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            }
            Ok(UnitKind::CgroupV1)
        }
        CgroupHost::V2 { own } => {
            let parent = own.join(PARENT_DIR).join(coordinator_id);
            let dir = parent.join(container_id);
            if cpu.is_some() || memory_mb.is_some() {
                // Limits need the controllers delegated down to the unit. The own
                // cgroup may hold processes (then the kernel refuses): the limit is
                // then not enforceable and is refused.
                mkdir_all(&parent)?;
                let wanted: Vec<&str> = [cpu.map(|_| "+cpu"), memory_mb.map(|_| "+memory")]
                    .into_iter()
                    .flatten()
                    .collect();
                for level in [own.clone(), own.join(PARENT_DIR), parent.clone()] {
                    for controller in &wanted {
                        write_file(&level.join("cgroup.subtree_control"), controller)?;
                    }
                }
            }
            mkdir_all(&dir)?;
            dirs.push(dir.clone());
            if let Some(cores) = cpu {
                let value = cpu_max_v2(cores).ok_or(format!("invalid --cpu {cores}"))?;
                write_file(&dir.join("cpu.max"), &value)?;
            }
            if let Some(mib) = memory_mb {
                let bytes = memory_bytes(mib).ok_or(format!("invalid --memory {mib}"))?;
                write_file(&dir.join("memory.max"), &bytes.to_string())?;
            }
            Ok(UnitKind::CgroupV2)
        }
    })();
    match result {
        Ok(kind) => Ok((kind, dirs)),
        Err(why) => {
            remove_dirs(&dirs);
            Err(why)
        }
    }
}

/// Creates a container's unit. Limits asked for that cannot be written are an
/// `Err` (the launch is refused); without limits a host with no writable cgroup
/// gets a process-tree unit.
pub fn create_unit(
    coordinator_id: &str,
    container_id: &str,
    session_id: &str,
    cpu: Option<f64>,
    memory_mb: Option<u64>,
) -> Result<UnitRecord, String> {
    let record = |kind, cgroups, fallback_reason| UnitRecord {
        version: RECORD_VERSION,
        kind,
        coordinator_id: coordinator_id.to_string(),
        container_id: container_id.to_string(),
        session_id: session_id.to_string(),
        cgroups,
        marker: marker_value(coordinator_id, container_id),
        cpu,
        memory_mb,
        fallback_reason,
    };
    match create_dirs(&host(), coordinator_id, container_id, cpu, memory_mb) {
        Ok((kind, dirs)) => Ok(record(kind, dirs, None)),
        Err(why) if cpu.is_some() || memory_mb.is_some() => Err(why),
        Err(why) => Ok(record(UnitKind::ProcessTree, Vec::new(), Some(why))),
    }
}

/// Writes the record atomically (0600) into `dir`.
pub fn write_record(dir: &Path, record: &UnitRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(RECORD_FILE);
    let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

/// Reads a container's record back, bounded and without following links, and
/// drops every cgroup path that is not one of ours for this container. `None`
/// when there is no readable record for exactly this coordinator and container.
pub fn read_record(dir: &Path, coordinator_id: &str, container_id: &str) -> Option<UnitRecord> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(dir.join(RECORD_FILE))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES).read_to_end(&mut bytes).ok()?;
    let mut record: UnitRecord = serde_json::from_slice(&bytes).ok()?;
    if record.coordinator_id != coordinator_id || record.container_id != container_id {
        return None;
    }
    let mounts = mounts();
    record
        .cgroups
        .retain(|p| recorded_path_is_ours(p, &mounts, coordinator_id, container_id));
    record.marker = marker_value(coordinator_id, container_id);
    Some(record)
}

/// The `cgroup.procs` files a launcher writes itself into.
pub fn procs_files(record: &UnitRecord) -> Vec<PathBuf> {
    record
        .cgroups
        .iter()
        .map(|d| d.join("cgroup.procs"))
        .collect()
}

/// `dir` and the cgroups nested under it (bounded), deepest first.
fn nested_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut frontier = vec![(dir.to_path_buf(), 0usize)];
    while let Some((current, depth)) = frontier.pop() {
        if depth >= MAX_NESTED_DEPTH || found.len() >= MAX_NESTED_DIRS {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) && found.len() < MAX_NESTED_DIRS {
                found.push(entry.path());
                frontier.push((entry.path(), depth + 1));
            }
        }
    }
    found.reverse();
    found
}

/// Pids listed in a `cgroup.procs` file (bounded).
fn read_procs(file: &Path) -> Vec<u32> {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let mut text = String::new();
    let _ = f.take(4 << 20).read_to_string(&mut text);
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Every process in a cgroup directory and the cgroups nested under it.
pub fn cgroup_members(dir: &Path) -> BTreeSet<u32> {
    nested_dirs(dir)
        .iter()
        .flat_map(|d| read_procs(&d.join("cgroup.procs")))
        .collect()
}

/// Every live process (not a zombie) whose environment carries a `PARHELIA_UNIT`
/// of `coordinator_id`: container id → pids.
pub fn scan_markers(coordinator_id: &str) -> BTreeMap<String, BTreeSet<u32>> {
    let mut found: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        if let Some((coordinator, container)) = marker_of(pid)
            && coordinator == coordinator_id
        {
            found.entry(container).or_default().insert(pid);
        }
    }
    found
}

/// `(coordinator, container)` of a live process's marker.
fn marker_of(pid: u32) -> Option<(String, String)> {
    use std::io::Read;
    if is_zombie(pid) {
        return None;
    }
    let f = std::fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut bytes = Vec::new();
    f.take(1 << 20).read_to_end(&mut bytes).ok()?;
    let value = marker_in_environ(&bytes)?;
    let (coordinator, container) = value.split_once(':')?;
    (safe_name(coordinator) && safe_name(container))
        .then(|| (coordinator.to_string(), container.to_string()))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3).map(|c| c == "Z" || c == "X"))
        })
        .unwrap_or(true)
}

/// The processes of a unit now: the cgroup's members (nested cgroups included)
/// and, for every kind, the processes carrying its marker. Zombies are not counted.
pub fn members(record: &UnitRecord) -> BTreeSet<u32> {
    let mut pids: BTreeSet<u32> = record
        .cgroups
        .first()
        .map(|d| cgroup_members(d))
        .unwrap_or_default();
    pids.extend(
        scan_markers(&record.coordinator_id)
            .remove(&record.container_id)
            .unwrap_or_default(),
    );
    pids.retain(|p| !is_zombie(*p));
    pids
}

fn signal_all(pids: &BTreeSet<u32>, signal: nix::sys::signal::Signal) {
    for pid in pids {
        if *pid <= 1 || *pid == std::process::id() {
            continue;
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal);
    }
}

/// Stops (SIGSTOP) every process of the unit, repeating until a pass finds no new
/// one (so a fork between passes is caught): the workspace no longer changes while
/// it is checkpointed. Returns the processes found.
pub fn freeze(record: &UnitRecord, extra: &BTreeSet<u32>) -> BTreeSet<u32> {
    let mut seen: BTreeSet<u32> = extra.clone();
    for _ in 0..SIGNAL_PASSES {
        let now: BTreeSet<u32> = members(record).union(extra).copied().collect();
        let new: BTreeSet<u32> = now.difference(&seen).copied().collect();
        signal_all(&now, nix::sys::signal::Signal::SIGSTOP);
        seen.extend(now);
        if new.is_empty() {
            break;
        }
    }
    seen.retain(|p| !is_zombie(*p));
    seen
}

/// Ends every process of the unit (v2: `cgroup.kill` first; then SIGKILL passes
/// until none is left or the passes run out), removes its cgroup directories, and
/// returns the processes still alive (none, unless something escaped the kill).
pub fn kill(record: &UnitRecord, extra: &BTreeSet<u32>) -> BTreeSet<u32> {
    if record.kind == UnitKind::CgroupV2
        && let Some(dir) = record.cgroups.first()
    {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    let mut left = BTreeSet::new();
    for pass in 0..SIGNAL_PASSES {
        let mut now = members(record);
        now.extend(extra.iter().copied().filter(|p| !is_zombie(*p)));
        if now.is_empty() {
            left.clear();
            break;
        }
        signal_all(&now, nix::sys::signal::Signal::SIGKILL);
        // A stopped process dies of SIGKILL too; give the kernel a moment to reap.
        std::thread::sleep(std::time::Duration::from_millis(if pass < 10 {
            5
        } else {
            20
        }));
        left = now;
    }
    remove_unit_dirs(record);
    left.retain(|p| !is_zombie(*p) && std::path::Path::new(&format!("/proc/{p}")).exists());
    left
}

/// Removes a unit's cgroup directories (nested ones first); a directory that still
/// holds processes stays.
pub fn remove_unit_dirs(record: &UnitRecord) {
    remove_dirs(&record.cgroups);
}

fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        for nested in nested_dirs(dir) {
            let _ = std::fs::remove_dir(&nested);
        }
        // The coordinator's parent goes with its last unit (a busy one stays).
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Unit directories under the parents of `coordinator_id` on this host whose names
/// are container ids: how `cleanup` finds units with no record.
pub fn unit_dirs_on_host(coordinator_id: &str) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    if !safe_name(coordinator_id) {
        return found;
    }
    let bases: Vec<PathBuf> = match host() {
        CgroupHost::V1 { membership, .. } => vec![membership],
        CgroupHost::V2 { own } => vec![own],
        CgroupHost::None(_) => Vec::new(),
    };
    for base in bases {
        let parent = base.join(PARENT_DIR).join(coordinator_id);
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten().take(MAX_NESTED_DIRS) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if safe_name(&name) && !name.starts_with("probe-") && entry.path().is_dir() {
                found.insert(name, entry.path());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HYBRID_MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/c69d
1:cpu:/
0::/
";

    #[test]
    fn a_hybrid_host_uses_v1_nested_under_its_own_cgroups() {
        let host = plan_host(
            &parse_mounts(HYBRID_MOUNTS),
            &parse_proc_cgroup(HYBRID_SELF),
        );
        assert_eq!(
            host,
            CgroupHost::V1 {
                membership: "/sys/fs/cgroup/pids".into(),
                cpu: Some("/sys/fs/cgroup/cpu".into()),
                memory: Some("/sys/fs/cgroup/memory/process_api/c69d".into()),
            }
        );
        assert_eq!(
            unit_dir(
                Path::new("/sys/fs/cgroup/memory/process_api/c69d"),
                "co1",
                "c-1"
            ),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/c69d/parhelia/co1/c-1")
        );
    }

    #[test]
    fn a_pure_v2_host_uses_its_own_cgroup() {
        let mounts = parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
        let own = parse_proc_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n");
        assert_eq!(
            plan_host(&mounts, &own),
            CgroupHost::V2 {
                own: "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope".into()
            }
        );
        assert!(matches!(plan_host(&[], &own), CgroupHost::None(_)));
        // A path that climbs out of the mount is never used.
        let climbing = parse_proc_cgroup("0::/../../etc\n");
        assert!(matches!(plan_host(&mounts, &climbing), CgroupHost::None(_)));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        let mounts = parse_mounts("cgroup /sys/fs/my\\040cg cgroup rw,pids 0 0\n");
        assert_eq!(mounts[0].path, PathBuf::from("/sys/fs/my cg"));
        assert_eq!(mounts[0].controllers, vec!["pids".to_string()]);
    }

    #[test]
    fn limit_values() {
        assert_eq!(cpu_max_v2(1.5).as_deref(), Some("150000 100000"));
        assert_eq!(cpu_quota_us(2.0), Some(200_000));
        assert_eq!(cpu_quota_us(0.001), Some(1000));
        assert_eq!(cpu_quota_us(0.0), None);
        assert_eq!(cpu_quota_us(f64::NAN), None);
        assert_eq!(cpu_quota_us(-1.0), None);
        assert_eq!(memory_bytes(512), Some(512 * 1024 * 1024));
        assert_eq!(memory_bytes(0), None);
        assert_eq!(memory_bytes(u64::MAX), None);
    }

    #[test]
    fn recorded_paths_must_be_ours() {
        let mounts = parse_mounts(HYBRID_MOUNTS);
        let ok = Path::new("/sys/fs/cgroup/pids/parhelia/co1/c-1");
        assert!(recorded_path_is_ours(ok, &mounts, "co1", "c-1"));
        for bad in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/pids/parhelia/co2/c-1",
            "/sys/fs/cgroup/pids/parhelia/co1/c-2",
            "/sys/fs/cgroup/pids/../pids/parhelia/co1/c-1",
            "/etc/parhelia/co1/c-1",
            "parhelia/co1/c-1",
        ] {
            assert!(
                !recorded_path_is_ours(Path::new(bad), &mounts, "co1", "c-1"),
                "{bad}"
            );
        }
        assert!(!recorded_path_is_ours(ok, &mounts, "co1", ".."));
    }

    #[test]
    fn the_marker_is_read_from_an_environment_block() {
        assert_eq!(
            marker_in_environ(b"PATH=/bin\0PARHELIA_UNIT=co1:c-1\0HOME=/root\0").as_deref(),
            Some("co1:c-1")
        );
        assert_eq!(marker_in_environ(b"XPARHELIA_UNIT=co1:c-1\0"), None);
        assert_eq!(marker_in_environ(b""), None);
    }

    proptest! {
        /// Parsing is total on any text, and every path planned stays under a mount.
        #[test]
        fn parsing_is_total_and_plans_stay_under_a_mount(mounts in ".{0,400}", own in ".{0,400}") {
            let mounts = parse_mounts(&mounts);
            let own = parse_proc_cgroup(&own);
            match plan_host(&mounts, &own) {
                CgroupHost::V1 { membership, cpu, memory } => {
                    for p in std::iter::once(membership).chain(cpu).chain(memory) {
                        prop_assert!(mounts.iter().any(|m| p.starts_with(&m.path)));
                        prop_assert!(!p.components().any(|c| c == Component::ParentDir));
                    }
                }
                CgroupHost::V2 { own } => {
                    prop_assert!(mounts.iter().any(|m| own.starts_with(&m.path)));
                    prop_assert!(!own.components().any(|c| c == Component::ParentDir));
                }
                CgroupHost::None(_) => {}
            }
        }

        /// A unit directory built from safe names is accepted back; any other name is not.
        #[test]
        fn only_safe_names_round_trip(coord in "[a-z0-9]{1,12}", cid in "[ -~]{1,20}") {
            let mounts = parse_mounts(HYBRID_MOUNTS);
            let dir = unit_dir(Path::new("/sys/fs/cgroup/pids"), &coord, &cid);
            prop_assert_eq!(recorded_path_is_ours(&dir, &mounts, &coord, &cid), safe_name(&cid));
        }

        /// The v1 quota and the v2 `cpu.max` agree, and never undercut the request.
        #[test]
        fn cpu_values_agree(cores in 0.001f64..1024.0) {
            let quota = cpu_quota_us(cores).unwrap();
            prop_assert_eq!(cpu_max_v2(cores).unwrap(), format!("{quota} {CPU_PERIOD_US}"));
            prop_assert!(quota as f64 >= cores * CPU_PERIOD_US as f64 - 1e-6);
        }
    }
}
