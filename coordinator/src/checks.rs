//! One finding of `parhelia doctor` (a verdict, what to do, what `--fix` can do): the
//! pure type the doctor's checks (`doctor.rs`) and the store checks (`store_health.rs`)
//! both build, so neither imports the other for it.

use std::path::PathBuf;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// What `--fix` can do about a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repair {
    /// `chmod 700` the state directory.
    RestrictStateDir,
    /// Remove a socket no coordinator holds.
    RemoveStaleSocket { path: PathBuf },
    /// Run a reconciler pass (through the coordinator).
    RunReconciler,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
    /// What `--fix` would do.
    pub repair: Option<Repair>,
    /// `--fix` did it.
    pub repaired: bool,
}

impl Check {
    pub(crate) fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
            repair: None,
            repaired: false,
        }
    }

    pub(crate) fn warn(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            verdict: Verdict::Warn,
            fix: Some(fix.into()),
            ..Self::ok(name, detail)
        }
    }

    pub(crate) fn fail(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            verdict: Verdict::Fail,
            fix: Some(fix.into()),
            ..Self::ok(name, detail)
        }
    }

    pub(crate) fn with_repair(mut self, repair: Repair) -> Self {
        self.repair = Some(repair);
        self
    }
}
