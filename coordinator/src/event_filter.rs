//! The unified event log as the CLI sees it: agent events (journaled by the
//! agents, `events` table) and coordinator events (what the control plane
//! did, `coordinator_events` table), with the filters of `events list`,
//! `watch`, `export` and `replay`. Pure: the filter's meaning is
//! [`EventFilter::matches`]; the database evaluates the same filter in SQL
//! and a test checks the two agree.

use serde::Serialize;

use crate::error::CodedError;
use crate::error_codes;
use crate::ids::rfc3339_ms;
use crate::term::escape_untrusted;

/// Every type of event the coordinator records: with
/// [`parhelia_proto::EVENT_TYPE_NAMES`], what `events … --type` accepts.
pub const COORDINATOR_EVENT_TYPES: &[&str] = &[
    "budget_exceeded",
    "budget_refused",
    "budget_set",
    "budget_warning",
    "checkpoint_durable",
    "container_lost",
    "container_stuck",
    "container_terminated",
    "database_generation_unreadable",
    "database_rolled_back",
    "database_rebuilt",
    "disk_full",
    "disk_space_back",
    "gpu_unavailable",
    "health_changed",
    "journal_gap",
    "launch_failed",
    "orphan_detected",
    "orphan_gone",
    "orphan_terminated",
    "reconciler_run",
    "resume_failed",
    "session_processes_ended",
    "session_resumed",
    "session_rolled_back",
    "task_cancelled",
    "task_created",
    "task_deleted",
    "task_dispatched",
    "task_retried",
    "usage_reconciled",
    "usage_unreported",
];

/// Who recorded an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// An agent journaled it (Claude Code's activity, the session's life).
    Agent,
    /// The coordinator recorded it (dispatch, cancel, reconciler actions).
    Coordinator,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Agent => "agent",
            EventSource::Coordinator => "coordinator",
        }
    }

    pub fn parse(text: &str) -> Result<Self, CodedError> {
        match text {
            "agent" => Ok(EventSource::Agent),
            "coordinator" => Ok(EventSource::Coordinator),
            other => Err(CodedError::new(
                error_codes::INVALID_INPUT,
                format!("unknown event source `{other}` (expected agent or coordinator)"),
            )),
        }
    }
}

pub const LEVELS: [&str; 3] = ["info", "warning", "error"];

/// Other names for event types, as the seeds' commands use them:
/// `container_started` is the agent's first event in a container
/// (`session_started`, recorded on every launch and resume).
pub const TYPE_ALIASES: &[(&str, &str)] = &[("container_started", "session_started")];

/// Every event type `--type` accepts (agent's, then the coordinator's), sorted.
pub fn event_types() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = parhelia_proto::EVENT_TYPE_NAMES
        .iter()
        .chain(COORDINATOR_EVENT_TYPES)
        .copied()
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// A `--type` value as stored: an alias's target, or the name itself when
/// it is a known type; E117 (listing the valid ones) otherwise.
pub fn canonical_event_type(name: &str) -> Result<String, CodedError> {
    let name = name.trim().to_ascii_lowercase();
    if let Some((_, target)) = TYPE_ALIASES.iter().find(|(alias, _)| *alias == name) {
        return Ok((*target).to_string());
    }
    let all = event_types();
    if all.contains(&name.as_str()) {
        return Ok(name);
    }
    Err(CodedError::new(
        error_codes::UNKNOWN_EVENT_TYPE,
        format!(
            "unknown event type `{}` (valid: {}; aliases: {})",
            crate::term::escape_untrusted_text(&name),
            all.join(", "),
            TYPE_ALIASES
                .iter()
                .map(|(a, t)| format!("{a} = {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// Which events to return. Empty lists and `None`s match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Any of these types.
    pub types: Vec<String>,
    /// Any of these levels (`info`, `warning`, `error`).
    pub levels: Vec<String>,
    /// `ts_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// `ts_ms <= until_ms`.
    pub until_ms: Option<i64>,
    pub container_id: Option<String>,
    pub task_id: Option<String>,
    pub session_id: Option<String>,
    pub source: Option<EventSource>,
}

impl EventFilter {
    /// The filter's meaning, on one row.
    pub fn matches(&self, row: &EventRow) -> bool {
        (self.types.is_empty() || self.types.contains(&row.event_type))
            && (self.levels.is_empty() || self.levels.contains(&row.level))
            && self.since_ms.is_none_or(|t| row.ts_ms >= t)
            && self.until_ms.is_none_or(|t| row.ts_ms <= t)
            && same(&self.container_id, &row.container_id)
            && same(&self.task_id, &row.task_id)
            && same(&self.session_id, &row.session_id)
            && self.source.is_none_or(|s| s == row.source)
    }

    /// Splits comma-separated lists, maps the seeds' type names to ours
    /// ([`TYPE_ALIASES`]) and checks types (E117) and levels.
    pub fn with_lists(mut self, types: &[String], levels: &[String]) -> Result<Self, CodedError> {
        self.types = split_list(types)
            .into_iter()
            .map(|t| canonical_event_type(&t))
            .collect::<Result<_, _>>()?;
        self.types.dedup();
        self.levels = split_list(levels);
        if let Some(bad) = self.levels.iter().find(|l| !LEVELS.contains(&l.as_str())) {
            return Err(CodedError::new(
                error_codes::INVALID_INPUT,
                format!("unknown event level `{bad}` (expected info, warning or error)"),
            ));
        }
        Ok(self)
    }
}

fn same(wanted: &Option<String>, actual: &Option<String>) -> bool {
    match wanted {
        None => true,
        Some(w) => actual.as_deref() == Some(w.as_str()),
    }
}

fn split_list(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// `--since`/`--until`/`--older-than`: a duration before `now_ms` (`30m`,
/// `2h`, `1d 6h`, `45s`) or an RFC 3339 time (`2025-01-31T12:00:00Z`).
pub fn parse_time_bound(text: &str, now_ms: i64) -> Result<i64, CodedError> {
    let text = text.trim();
    if let Ok(duration) = humantime::parse_duration(text) {
        return Ok(now_ms - duration.as_millis() as i64);
    }
    if let Ok(time) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok((time.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    Err(CodedError::new(
        error_codes::INVALID_INPUT,
        format!("`{text}` is neither a duration (30m, 2h, 2d) nor an RFC 3339 time"),
    ))
}

/// A duration (`2d`) in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, CodedError> {
    humantime::parse_duration(text.trim())
        .map(|d| d.as_millis() as i64)
        .map_err(|_| {
            CodedError::new(
                error_codes::INVALID_INPUT,
                format!("`{text}` is not a duration (examples: 45s, 30m, 2h, 2d)"),
            )
        })
}

/// One event of either source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventRow {
    pub source: EventSource,
    /// The row id within its source's table.
    pub id: i64,
    pub ts_ms: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub level: String,
    pub container_id: Option<String>,
    pub session_id: Option<String>,
    pub task_id: Option<String>,
    /// Agent events: the journal sequence number.
    pub seq: Option<u64>,
    /// One readable line.
    pub message: String,
    /// Agent events: the `parhelia.v1.Event` (journal line form);
    /// coordinator events: their details.
    pub payload: serde_json::Value,
}

/// `--json` / `export` form of a row: the row plus an RFC 3339 time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventView<'a> {
    pub time: String,
    #[serde(flatten)]
    pub row: &'a EventRow,
}

impl<'a> From<&'a EventRow> for EventView<'a> {
    fn from(row: &'a EventRow) -> Self {
        EventView {
            time: rfc3339_ms(row.ts_ms),
            row,
        }
    }
}

/// The order every listing uses: time, then source, then row id (so an
/// agent's events keep their journal order).
pub fn sort_rows(rows: &mut [EventRow]) {
    rows.sort_by_key(|r| (r.ts_ms, r.source, r.id));
}

fn short_level(level: &str) -> &str {
    match level {
        "warning" => "warn",
        "error" => "err",
        other => other,
    }
}

/// The table header of `events list` (80 columns).
pub const TABLE_HEADER: &str = "TIME                LVL  CONTAINER     TYPE                MESSAGE";

/// One row of `events list` (cut to 80 columns).
pub fn table_line(row: &EventRow) -> String {
    let time = rfc3339_ms(row.ts_ms);
    // 2025-01-31T12:00:00.123Z → 01-31 12:00:00.123
    let short_time = time.get(5..23).unwrap_or(&time).replace('T', " ");
    // Type, container and message can come from a session's journal: every
    // field is escaped here, whatever produced the message.
    let line = format!(
        "{:<19} {:<4} {:<13} {:<19} {}",
        short_time,
        escape_untrusted(short_level(&row.level)),
        escape_untrusted(row.container_id.as_deref().unwrap_or("-")),
        escape_untrusted(&row.event_type),
        escape_untrusted(row.message.lines().next().unwrap_or(""))
    );
    cut(&line, 80)
}

/// `events replay`: the time, then the rendered event (all of its lines).
pub fn replay_line(row: &EventRow) -> String {
    let time = rfc3339_ms(row.ts_ms);
    let clock = time.get(11..23).unwrap_or(&time);
    let marker = match row.source {
        EventSource::Agent => " ",
        EventSource::Coordinator => "*",
    };
    let label: String = escape_untrusted(&row.event_type).chars().take(16).collect();
    let mut out = String::new();
    for (i, line) in row.message.lines().enumerate() {
        let line = escape_untrusted(line);
        if i == 0 {
            out.push_str(&format!("{clock}{marker} {label:<17}{line}"));
        } else {
            out.push_str(&format!("\n{:31}{line}", ""));
        }
    }
    out
}

fn cut(line: &str, max: usize) -> String {
    if line.chars().count() <= max {
        return line.to_string();
    }
    let mut out: String = line.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal's event type and message carrying terminal escapes (a
    /// session writes its own journal): no listing prints them raw.
    #[test]
    fn session_text_in_event_rows_cannot_drive_the_terminal() {
        let mut r = row(
            EventSource::Agent,
            1,
            0,
            "x\u{1b}]0;owned\u{7}",
            "info",
            Some("c\u{1b}[2J"),
        );
        r.message = "fallback \u{1b}[31mred\u{9b}2J\nsecond \u{1b}[1A".into();
        for text in [table_line(&r), replay_line(&r)] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
        }
        assert!(replay_line(&r).contains("second"), "every line is kept");
    }

    fn row(
        source: EventSource,
        id: i64,
        ts: i64,
        ty: &str,
        level: &str,
        c: Option<&str>,
    ) -> EventRow {
        EventRow {
            source,
            id,
            ts_ms: ts,
            event_type: ty.into(),
            level: level.into(),
            container_id: c.map(str::to_string),
            session_id: None,
            task_id: c.map(|c| format!("task-of-{c}")),
            seq: (source == EventSource::Agent).then_some(id as u64),
            message: format!("{ty} happened"),
            payload: serde_json::json!({}),
        }
    }

    #[test]
    fn filters_combine_with_and_lists_with_or() {
        let rows = [
            row(EventSource::Agent, 1, 100, "tool_call", "info", Some("c1")),
            row(
                EventSource::Agent,
                2,
                200,
                "api_retry",
                "warning",
                Some("c1"),
            ),
            row(
                EventSource::Coordinator,
                1,
                150,
                "container_lost",
                "error",
                Some("c2"),
            ),
            row(
                EventSource::Coordinator,
                2,
                300,
                "reconciler_run",
                "info",
                None,
            ),
        ];
        let ids = |f: &EventFilter| -> Vec<(EventSource, i64)> {
            rows.iter()
                .filter(|r| f.matches(r))
                .map(|r| (r.source, r.id))
                .collect()
        };
        let f = EventFilter::default()
            .with_lists(&["tool_call,container_lost".into()], &[])
            .unwrap();
        assert_eq!(
            ids(&f),
            [(EventSource::Agent, 1), (EventSource::Coordinator, 1)]
        );
        let f = EventFilter {
            since_ms: Some(150),
            until_ms: Some(250),
            ..EventFilter::default()
        };
        assert_eq!(
            ids(&f),
            [(EventSource::Agent, 2), (EventSource::Coordinator, 1)]
        );
        let f = EventFilter {
            container_id: Some("c1".into()),
            ..EventFilter::default()
        }
        .with_lists(&[], &["warning".into(), "error".into()])
        .unwrap();
        assert_eq!(ids(&f), [(EventSource::Agent, 2)]);
        let f = EventFilter {
            source: Some(EventSource::Coordinator),
            task_id: Some("task-of-c2".into()),
            ..EventFilter::default()
        };
        assert_eq!(ids(&f), [(EventSource::Coordinator, 1)]);
        let err = EventFilter::default()
            .with_lists(&[], &["fatal".into()])
            .unwrap_err();
        assert_eq!(err.code.code, "E100");
    }

    #[test]
    fn an_unknown_type_is_e117_listing_the_valid_ones_and_seed_names_map_to_ours() {
        let err = EventFilter::default()
            .with_lists(&["nope".into()], &[])
            .unwrap_err();
        assert_eq!(err.code, error_codes::UNKNOWN_EVENT_TYPE);
        for name in event_types() {
            assert!(
                err.message.contains(name),
                "{name} not listed: {}",
                err.message
            );
        }
        let f = EventFilter::default()
            .with_lists(&["container_started,tool_call".into()], &[])
            .unwrap();
        assert_eq!(f.types, ["session_started", "tool_call"]);
        // Every type either side records is accepted as itself.
        for name in parhelia_proto::EVENT_TYPE_NAMES
            .iter()
            .chain(COORDINATOR_EVENT_TYPES)
        {
            assert_eq!(canonical_event_type(name).unwrap(), *name);
        }
    }

    /// Every literal type the coordinator passes to `NewCoordinatorEvent::new`
    /// is in the list `--type` accepts (the debug assertion catches the rest
    /// at run time).
    #[test]
    fn every_coordinator_event_type_in_the_source_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut seen = 0;
        for entry in walkdir::WalkDir::new(&src) {
            let entry = entry.unwrap();
            // (This file only names the pattern.)
            if entry.path().extension().is_none_or(|e| e != "rs")
                || entry.path().ends_with("event_filter.rs")
            {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for (i, _) in text.match_indices("NewCoordinatorEvent::new(") {
                let rest = text[i + "NewCoordinatorEvent::new(".len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let name = &rest[..rest.find('"').unwrap()];
                if name == "{event_type}" {
                    continue;
                }
                seen += 1;
                assert!(
                    COORDINATOR_EVENT_TYPES.contains(&name),
                    "{}: `{name}` is not in COORDINATOR_EVENT_TYPES",
                    entry.path().display()
                );
            }
        }
        assert!(seen > 10, "found only {seen} event types");
    }

    #[test]
    fn time_bounds_are_durations_or_rfc3339() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time_bound("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_time_bound("2d", now).unwrap(), now - 172_800_000);
        assert_eq!(
            parse_time_bound("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(parse_time_bound("soon", now).unwrap_err().code.code, "E100");
        assert_eq!(parse_duration_ms("2d").unwrap(), 172_800_000);
        assert_eq!(parse_duration_ms("x").unwrap_err().code.code, "E100");
    }

    #[test]
    fn table_lines_fit_80_columns() {
        let mut r = row(
            EventSource::Coordinator,
            1,
            1_700_000_000_123,
            "container_lost",
            "error",
            Some("ctr-1a2b3c4d"),
        );
        r.message =
            "ctr-1a2b3c4d: lost (not running, silent for 300s); task task-00000001 interrupted"
                .into();
        let line = table_line(&r);
        assert!(line.chars().count() <= 80, "{line}");
        assert!(
            line.starts_with(
                "11-14 22:13:20.123  err  ctr-1a2b3c4d  container_lost      ctr-1a2b3c4d: lost"
            ),
            "{line}"
        );
        assert!(TABLE_HEADER.len() <= 80);
        assert_eq!(
            replay_line(&r).get(..45),
            Some("22:13:20.123* container_lost   ctr-1a2b3c4d: ")
        );
    }
}
