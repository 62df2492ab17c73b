//! What this host can enforce for a local task, probed (IO): whether `--cpu`/`--memory`
//! can be written into a cgroup, and which NVIDIA GPUs it has. The decisions on what
//! they mean stay pure in [`crate::budget`] (`refuse_unenforced_on`,
//! `refuse_missing_gpu`); this module only looks.

use crate::budget::{LocalCapabilities, TaskLimits, refuse_unenforced_on};

/// Probes only what `limits` ask for.
pub fn probe(limits: &TaskLimits) -> LocalCapabilities {
    LocalCapabilities {
        cgroup_limits: super::unit::limits_enforceable(
            limits.cpu.is_some(),
            limits.memory_mb.is_some(),
        ),
        gpus: if limits.gpu.is_some() {
            host_gpus()
        } else {
            Vec::new()
        },
    }
}

/// Limits are real or refused, never accepted and ignored. On the local backend
/// `--cpu`/`--memory` are written into the session's cgroup, so they are refused
/// (E113) only where no cgroup can be written; `--gpu` is refused (E114) unless this
/// host has that GPU. `--timeout` and `--max-cost` are enforced everywhere. Probes
/// the host only when a local limit is asked for.
pub fn refuse_unenforced(
    limits: &TaskLimits,
    backend: &str,
) -> Result<(), crate::error::CodedError> {
    if backend != "local"
        || (limits.gpu.is_none() && limits.cpu.is_none() && limits.memory_mb.is_none())
    {
        return Ok(());
    }
    refuse_unenforced_on(limits, backend, &probe(limits))
}

/// `nvidia-smi -L`'s lines, or none when it is missing or fails.
pub fn host_gpus() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .take(256)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
