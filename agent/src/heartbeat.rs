//! Resource sampling for heartbeats.
//!
//! Promises:
//! - CPU and memory cover the session's process tree: the private tmux server and all its
//!   descendants (the launcher shell, Claude Code, the tools it runs). CPU is percent of
//!   one core over the last sampling interval (0 on the first sample); memory is resident.
//! - The workspace size is its apparent size (sum of file lengths, symlinks not followed),
//!   computed on a blocking thread and cached: a walk that outlasts the interval never
//!   delays a heartbeat, the previous value is sent instead.
//! - [`run_heartbeat_timer`] produces one sample per interval, first one at once.
//!   Heartbeats are observations and are not journaled; the supervisor adds status and
//!   seq and broadcasts them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One observation of the session's resource use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResourceSample {
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub workspace_disk_bytes: u64,
}

/// Keeps the state that makes successive samples cheap and CPU usage meaningful.
pub struct ResourceSampler {
    system: Option<System>,
    workspace: PathBuf,
    workspace_bytes: u64,
    workspace_walk: Option<JoinHandle<u64>>,
}

impl ResourceSampler {
    pub fn new(workspace: &Path) -> ResourceSampler {
        let system = match System::new() {
            Ok(system) => Some(system),
            Err(e) => {
                tracing::warn!(error = %e, "process sampling is unavailable; heartbeats report 0 CPU and memory");
                None
            }
        };
        ResourceSampler {
            system,
            workspace: workspace.to_path_buf(),
            workspace_bytes: 0,
            workspace_walk: None,
        }
    }

    /// Samples the tree rooted at `root_pid` (nothing yet when `None`).
    pub async fn sample(&mut self, root_pid: Option<u32>) -> ResourceSample {
        self.refresh_workspace_size().await;
        let (cpu_percent, memory_bytes) = match (self.system.take(), root_pid) {
            (Some(mut system), Some(root)) => {
                let sampled = tokio::task::spawn_blocking(move || {
                    system.refresh_processes_specifics(
                        ProcessesToUpdate::All,
                        true,
                        ProcessRefreshKind::nothing()
                            .with_cpu()
                            .with_memory()
                            .without_tasks(),
                    );
                    let usage = tree_usage(&system, Pid::from_u32(root));
                    (system, usage)
                })
                .await;
                match sampled {
                    Ok((system, usage)) => {
                        self.system = Some(system);
                        usage
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to sample processes");
                        (0.0, 0)
                    }
                }
            }
            (system, _) => {
                self.system = system;
                (0.0, 0)
            }
        };
        ResourceSample {
            cpu_percent,
            memory_bytes,
            workspace_disk_bytes: self.workspace_bytes,
        }
    }

    /// Takes the result of a finished walk, and starts a new one when none is running.
    async fn refresh_workspace_size(&mut self) {
        if let Some(walk) = &self.workspace_walk {
            if !walk.is_finished() {
                return;
            }
            if let Some(walk) = self.workspace_walk.take() {
                match walk.await {
                    Ok(bytes) => self.workspace_bytes = bytes,
                    Err(e) => tracing::warn!(error = %e, "failed to measure the workspace"),
                }
            }
        }
        let workspace = self.workspace.clone();
        let walk = tokio::task::spawn_blocking(move || apparent_size(&workspace));
        if self.workspace_bytes == 0 && self.workspace_walk.is_none() {
            // The very first sample waits for its walk so it is not a meaningless 0.
            match walk.await {
                Ok(bytes) => self.workspace_bytes = bytes,
                Err(e) => tracing::warn!(error = %e, "failed to measure the workspace"),
            }
            return;
        }
        self.workspace_walk = Some(walk);
    }
}

/// CPU percent and resident bytes of `root` and all its descendants.
fn tree_usage(system: &System, root: Pid) -> (f64, u64) {
    let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
    for (pid, process) in system.processes() {
        if let Some(parent) = process.parent() {
            children.entry(parent).or_default().push(*pid);
        }
    }
    let mut cpu = 0.0;
    let mut memory = 0;
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(process) = system.process(pid) {
            cpu += process.cpu_usage() as f64;
            memory += process.memory();
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids.iter().copied());
        }
    }
    (cpu, memory)
}

/// The sum of the lengths of all regular files under `root` (symlinks not followed).
pub fn apparent_size(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

/// Sends one [`ResourceSample`] per `interval` until `samples` closes. `root_pid` is the
/// tmux server's pid once it is known.
pub async fn run_heartbeat_timer<M>(
    interval: Duration,
    workspace: PathBuf,
    root_pid: watch::Receiver<Option<u32>>,
    samples: mpsc::Sender<M>,
) where
    M: From<ResourceSample>,
{
    let mut sampler = ResourceSampler::new(&workspace);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let root = *root_pid.borrow();
        let sample = sampler.sample(root).await;
        if samples.send(M::from(sample)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparent_size_sums_files_and_ignores_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0u8; 24]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("link")).unwrap();
        assert_eq!(apparent_size(dir.path()), 1024);
    }

    #[tokio::test]
    async fn samples_cover_the_process_tree_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"12345").unwrap();
        // A parent shell with a child, standing in for the tmux server's tree.
        use std::os::unix::process::CommandExt;
        let mut parent = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 30 & wait")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut sampler = ResourceSampler::new(dir.path());
        let first = sampler.sample(Some(parent.id())).await;
        assert_eq!(first.workspace_disk_bytes, 5);
        assert!(first.memory_bytes > 0, "{first:?}");
        let none = sampler.sample(None).await;
        assert_eq!(none.memory_bytes, 0);
        // The whole group, so the child does not outlive the test.
        let group = nix::unistd::Pid::from_raw(parent.id() as i32);
        nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
        parent.wait().unwrap();
    }
}
