//! Container states and health: the vocabulary of the control plane. Pure.
//!
//! ```text
//! created ──► starting ──► running ──► stopping ──► terminated
//!    │            │           │            └──────► (terminate again after the stop timeout)
//!    │            ├───────────┴──► lost        (gone from the backend *and* heartbeats stale)
//!    │            └──► failed                  (the agent never came up)
//! terminated | lost | failed ──► orphaned      (the backend still lists it after it ended)
//! orphaned ──► terminated                      (gone from the backend)
//! ```
//!
//! Health is derived from heartbeats of a container that should be alive
//! (`starting`, `running`): healthy, then degraded after
//! `degraded_after_missed` missed intervals, unhealthy after
//! `unhealthy_after_missed`, dead once nothing was heard for the stale
//! threshold. Health alone never ends a container: see [`crate::reconcile`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CodedError;
use crate::error_codes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Recorded; the backend has not started it yet.
    Created,
    /// The backend started the agent; it has not answered yet.
    Starting,
    /// The agent answered.
    Running,
    /// A stop was requested (Stop RPC or SIGTERM); waiting for it to go.
    Stopping,
    /// Gone after finishing or stopping.
    Terminated,
    /// Gone without finishing: the backend no longer lists it and no
    /// heartbeat arrived for the stale threshold.
    Lost,
    /// Still listed by the backend although its record says it ended.
    Orphaned,
    /// The agent never started.
    Failed,
}

impl ContainerState {
    pub const ALL: [ContainerState; 8] = [
        ContainerState::Created,
        ContainerState::Starting,
        ContainerState::Running,
        ContainerState::Stopping,
        ContainerState::Terminated,
        ContainerState::Lost,
        ContainerState::Orphaned,
        ContainerState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Starting => "starting",
            ContainerState::Running => "running",
            ContainerState::Stopping => "stopping",
            ContainerState::Terminated => "terminated",
            ContainerState::Lost => "lost",
            ContainerState::Orphaned => "orphaned",
            ContainerState::Failed => "failed",
        }
    }

    /// The coordinator believes a process exists (or is about to).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            ContainerState::Created
                | ContainerState::Starting
                | ContainerState::Running
                | ContainerState::Stopping
        )
    }

    /// The record says the container is over.
    pub fn has_ended(self) -> bool {
        matches!(
            self,
            ContainerState::Terminated | ContainerState::Lost | ContainerState::Failed
        )
    }

    /// Heartbeats are expected (health is tracked).
    pub fn expects_heartbeats(self) -> bool {
        matches!(self, ContainerState::Starting | ContainerState::Running)
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContainerState {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ContainerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                CodedError::new(
                    error_codes::UNKNOWN_STATUS,
                    format!(
                        "unknown container state: {s} (expected one of {})",
                        ContainerState::ALL.map(ContainerState::as_str).join(", ")
                    ),
                )
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    Dead,
}

impl Health {
    pub const ALL: [Health; 4] = [
        Health::Healthy,
        Health::Degraded,
        Health::Unhealthy,
        Health::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
            Health::Dead => "dead",
        }
    }

    /// The event level a change to this health is reported with.
    pub fn level(self) -> &'static str {
        match self {
            Health::Healthy => "info",
            Health::Degraded | Health::Unhealthy => "warning",
            Health::Dead => "error",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Health {
    type Err = CodedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Health::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| {
                CodedError::new(
                    error_codes::UNKNOWN_STATUS,
                    format!("unknown health: {s} (expected healthy, degraded, unhealthy or dead)"),
                )
            })
    }
}

/// The heartbeat thresholds (from `[reconciler]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthThresholds {
    /// Missed intervals before a container is degraded.
    pub degraded_after_missed: u32,
    /// Missed intervals before it is unhealthy.
    pub unhealthy_after_missed: u32,
    /// Silence (ms) after which it is dead.
    pub stale_threshold_ms: i64,
}

/// How many whole heartbeat intervals have passed without one.
pub fn missed_heartbeats(silence_ms: i64, interval_ms: i64) -> u32 {
    if silence_ms <= 0 || interval_ms <= 0 {
        return 0;
    }
    u32::try_from(silence_ms / interval_ms).unwrap_or(u32::MAX)
}

/// Health after `silence_ms` without a heartbeat, with heartbeats expected
/// every `interval_ms`.
pub fn health_for(silence_ms: i64, interval_ms: i64, t: &HealthThresholds) -> Health {
    if silence_ms > t.stale_threshold_ms {
        return Health::Dead;
    }
    let missed = missed_heartbeats(silence_ms, interval_ms);
    if missed >= t.unhealthy_after_missed {
        Health::Unhealthy
    } else if missed >= t.degraded_after_missed {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

impl Health {
    /// Worse is larger: healthy < degraded < unhealthy < dead.
    fn rank(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Unhealthy => 2,
            Health::Dead => 3,
        }
    }

    /// The worse of two.
    pub fn worst(self, other: Health) -> Health {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// What `status` says about a running session's heartbeat, derived from its age
/// against the interval (the same rule as [`health_for`]: fresh while healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatAge {
    /// The agent has not sent one yet.
    NoneYet,
    /// The last one is recent: fewer than `degraded_after_missed` intervals ago.
    Fresh { age_ms: i64 },
    /// The last one is older than that: the agent may be gone or stuck.
    Stale { age_ms: i64 },
}

impl HeartbeatAge {
    pub fn of(
        last_heartbeat_ms: Option<i64>,
        now_ms: i64,
        interval_ms: i64,
        t: &HealthThresholds,
    ) -> HeartbeatAge {
        let Some(last) = last_heartbeat_ms else {
            return HeartbeatAge::NoneYet;
        };
        // A clock step backwards reads as "just now", never as a negative age.
        let age_ms = now_ms.saturating_sub(last).max(0);
        match health_for(age_ms, interval_ms, t) {
            Health::Healthy => HeartbeatAge::Fresh { age_ms },
            _ => HeartbeatAge::Stale { age_ms },
        }
    }
}

impl fmt::Display for HeartbeatAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HeartbeatAge::NoneYet => f.write_str("no heartbeat yet"),
            HeartbeatAge::Fresh { age_ms } => write!(f, "heartbeat {}s ago", age_ms / 1000),
            HeartbeatAge::Stale { age_ms } => {
                write!(f, "heartbeat stale ({}s ago)", age_ms / 1000)
            }
        }
    }
}

/// The health to show for a container that should be sending heartbeats: the
/// stored one (the reconciler's, as of its last pass) or what the silence since
/// `heard_ms` (the last heartbeat, else the start) says now, whichever is worse.
pub fn shown_health(
    stored: Option<Health>,
    heard_ms: Option<i64>,
    now_ms: i64,
    interval_ms: i64,
    t: &HealthThresholds,
) -> Option<Health> {
    let by_age = heard_ms.map(|heard| health_for(now_ms.saturating_sub(heard), interval_ms, t));
    match (stored, by_age) {
        (Some(a), Some(b)) => Some(a.worst(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HealthThresholds = HealthThresholds {
        degraded_after_missed: 3,
        unhealthy_after_missed: 6,
        stale_threshold_ms: 300_000,
    };

    /// Issue 12, item 8: `status` said "heartbeat ok" whatever the heartbeat's age.
    #[test]
    fn the_heartbeat_line_follows_its_age() {
        // (last heartbeat, now, interval, line)
        let table = [
            (None, 100_000, 5_000, "no heartbeat yet"),
            (Some(97_000), 100_000, 5_000, "heartbeat 3s ago"),
            (Some(100_000), 100_000, 5_000, "heartbeat 0s ago"),
            (Some(86_000), 100_000, 5_000, "heartbeat 14s ago"),
            (Some(85_000), 100_000, 5_000, "heartbeat stale (15s ago)"),
            (Some(5_000), 100_000, 5_000, "heartbeat stale (95s ago)"),
            (Some(0), 1_000_000, 5_000, "heartbeat stale (1000s ago)"),
            // A heartbeat from the future (clock step) is fresh, not negative.
            (Some(200_000), 100_000, 5_000, "heartbeat 0s ago"),
        ];
        for (last, now, interval, line) in table {
            assert_eq!(
                HeartbeatAge::of(last, now, interval, &T).to_string(),
                line,
                "{last:?} {now} {interval}"
            );
        }
    }

    #[test]
    fn shown_health_is_the_worse_of_stored_and_age() {
        let now = 100_000;
        let shown = |stored, heard| shown_health(stored, heard, now, 5_000, &T);
        assert_eq!(
            shown(Some(Health::Healthy), Some(99_000)),
            Some(Health::Healthy)
        );
        // Stored healthy, but 95s of silence: what the age says wins.
        assert_eq!(
            shown(Some(Health::Healthy), Some(5_000)),
            Some(Health::Unhealthy)
        );
        assert_eq!(
            shown(Some(Health::Healthy), Some(80_000)),
            Some(Health::Degraded)
        );
        // A worse stored verdict is never hidden by a fresh heartbeat.
        assert_eq!(shown(Some(Health::Dead), Some(99_000)), Some(Health::Dead));
        assert_eq!(shown(None, Some(99_000)), Some(Health::Healthy));
        assert_eq!(shown(Some(Health::Degraded), None), Some(Health::Degraded));
        assert_eq!(shown(None, None), None);
    }

    proptest::proptest! {
        /// "Fresh" exactly when the container would be shown healthy; never a
        /// negative age; a stale line always names an age past the degraded mark.
        #[test]
        fn the_heartbeat_line_and_health_agree(
            last in proptest::option::of(-1_000_000i64..1_000_000),
            now in -1_000_000i64..1_000_000,
            interval in 1i64..60_000,
        ) {
            let age = HeartbeatAge::of(last, now, interval, &T);
            let health = shown_health(Some(Health::Healthy), last, now, interval, &T);
            match age {
                HeartbeatAge::NoneYet => proptest::prop_assert!(last.is_none()),
                HeartbeatAge::Fresh { age_ms } => {
                    proptest::prop_assert!(age_ms >= 0);
                    proptest::prop_assert_eq!(health, Some(Health::Healthy));
                }
                HeartbeatAge::Stale { age_ms } => {
                    proptest::prop_assert!(age_ms >= interval * i64::from(T.degraded_after_missed));
                    proptest::prop_assert_ne!(health, Some(Health::Healthy));
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in ContainerState::ALL {
            assert_eq!(s.as_str().parse::<ContainerState>().unwrap(), s);
        }
        for h in Health::ALL {
            assert_eq!(h.as_str().parse::<Health>().unwrap(), h);
        }
        assert_eq!(
            "launching".parse::<ContainerState>().unwrap_err().code.code,
            "E104"
        );
        assert_eq!("fine".parse::<Health>().unwrap_err().code.code, "E104");
    }

    #[test]
    fn health_follows_missed_intervals_then_the_stale_threshold() {
        let t = HealthThresholds {
            degraded_after_missed: 3,
            unhealthy_after_missed: 6,
            stale_threshold_ms: 10_000,
        };
        // (silence, interval, expected)
        let table = [
            (0, 1_000, Health::Healthy),
            (2_999, 1_000, Health::Healthy),
            (3_000, 1_000, Health::Degraded),
            (5_999, 1_000, Health::Degraded),
            (6_000, 1_000, Health::Unhealthy),
            (10_000, 1_000, Health::Unhealthy),
            (10_001, 1_000, Health::Dead),
            // A long interval never degrades before the stale threshold says dead.
            (9_000, 5_000, Health::Healthy),
            (10_001, 5_000, Health::Dead),
            (-5, 1_000, Health::Healthy),
        ];
        for (silence, interval, expected) in table {
            assert_eq!(
                health_for(silence, interval, &t),
                expected,
                "{silence}ms / {interval}ms"
            );
        }
        assert_eq!(missed_heartbeats(5_000, 0), 0);
    }

    #[test]
    fn state_classes() {
        use ContainerState::*;
        for s in ContainerState::ALL {
            assert!(!(s.is_active() && s.has_ended()), "{s}");
        }
        assert!(Starting.expects_heartbeats() && Running.expects_heartbeats());
        assert!(!Stopping.expects_heartbeats() && !Created.expects_heartbeats());
        assert!(!Orphaned.is_active() && !Orphaned.has_ended());
    }
}
