//! `parhelia events …`: the unified event log (see [`crate::event_filter`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{Ctx, Interrupt, print_json};
use crate::error::coded;
use crate::error_codes;
use crate::event_filter::{
    EventFilter, EventRow, EventSource, EventView, TABLE_HEADER, parse_time_bound, replay_line,
    table_line,
};
use crate::ids::now_ms;

/// The filters every `events` command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only these types (repeatable or comma-separated), e.g. tool_call,
    /// container_lost
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Only these levels: info, warning, error (repeatable or comma-separated)
    #[arg(long = "level", value_name = "L")]
    pub levels: Vec<String>,
    /// Only events at or after: a duration ago (30m, 2h, 2d) or an RFC 3339 time
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events at or before: a duration ago or an RFC 3339 time
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only this container's events
    #[arg(long, value_name = "C")]
    pub container: Option<String>,
    /// Only this task's events
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    /// Only this session's events
    #[arg(long, value_name = "S")]
    pub session: Option<String>,
    /// Only events recorded by `agent` or `coordinator`
    #[arg(long, value_name = "SRC")]
    pub source: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self, now: i64) -> Result<EventFilter> {
        Ok(EventFilter {
            since_ms: self
                .since
                .as_deref()
                .map(|s| parse_time_bound(s, now))
                .transpose()?,
            until_ms: self
                .until
                .as_deref()
                .map(|s| parse_time_bound(s, now))
                .transpose()?,
            container_id: self.container.clone(),
            task_id: self.task.clone(),
            session_id: self.session.clone(),
            source: self.source.as_deref().map(EventSource::parse).transpose()?,
            ..EventFilter::default()
        }
        .with_lists(&self.types, &self.levels)?)
    }
}

/// `events list`'s `--limit` when none is given.
pub(crate) const DEFAULT_LIST_LIMIT: u32 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line
    Jsonl,
    /// One JSON array
    Json,
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Events matching the filters, oldest first (the most recent `--limit`)
    List {
        #[command(flatten)]
        filters: FilterArgs,
        /// Show at most the last N (0: all)
        #[arg(long, value_name = "N", default_value_t = DEFAULT_LIST_LIMIT)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// New events matching the filters as they are recorded, until
    /// interrupted (Ctrl-C); with `--since`, earlier ones first
    Watch {
        #[command(flatten)]
        filters: FilterArgs,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Write every event matching the filters to FILE (`-`: stdout)
    Export {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[command(flatten)]
        filters: FilterArgs,
    },
    /// A container's history, rendered as `task watch` shows it (coordinator
    /// events are marked `*`)
    Replay {
        container_id: String,
        /// Only events at or after: a duration ago or an RFC 3339 time
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `events list`'s rows (the last `limit`, 0: all), and how many matched when that was
/// more: the one read the CLI and the MCP server's `parhelia_events_list` make.
pub(crate) fn list_events(
    ctx: &Ctx,
    filters: &FilterArgs,
    limit: u32,
) -> Result<(Vec<EventRow>, Option<u64>)> {
    let filter = filters.filter(now_ms())?;
    let opened = ctx.open()?;
    let last = (limit > 0).then_some(limit);
    let rows = opened.db.query_events(&filter, last)?;
    let mut more = None;
    if let Some(limit) = last
        && rows.len() as u32 == limit
    {
        let total = opened.db.count_events(&filter)?;
        if total > limit as u64 {
            more = Some(total);
        }
    }
    Ok((rows, more))
}

/// `events list --json`'s value.
pub(crate) fn list_json(rows: &[EventRow]) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(
        rows.iter().map(EventView::from).collect::<Vec<_>>(),
    )?)
}

pub async fn run(ctx: &Ctx, command: EventsCommand) -> Result<i32> {
    match command {
        EventsCommand::List {
            filters,
            limit,
            json,
        } => {
            let (rows, total) = list_events(ctx, &filters, limit)?;
            if let Some(total) = total {
                eprintln!("showing the last {limit} of {total} events (--limit 0 for all)");
            }
            if json {
                print_json(&list_json(&rows)?)?;
            } else if rows.is_empty() {
                outln!("no events");
            } else {
                outln!("{TABLE_HEADER}");
                for row in &rows {
                    outln!("{}", table_line(row));
                }
            }
            Ok(0)
        }
        EventsCommand::Watch { filters, json } => {
            let filter = filters.filter(now_ms())?;
            let opened = ctx.open()?;
            let mut interrupt = Interrupt::new();
            let mut cursor = if filter.since_ms.is_some() {
                Default::default()
            } else {
                opened.db.event_cursor()?
            };
            if !json {
                outln!("{TABLE_HEADER}");
            }
            loop {
                let rows = opened.db.events_after(&filter, cursor, None)?;
                let mut stdout = std::io::stdout().lock();
                for row in &rows {
                    cursor.advance(row);
                    if json {
                        writeln!(stdout, "{}", serde_json::to_string(&EventView::from(row))?)?;
                    } else {
                        writeln!(stdout, "{}", table_line(row))?;
                    }
                }
                stdout.flush()?;
                drop(stdout);
                if interrupt.sleep(Duration::from_millis(250)).await {
                    return Ok(0);
                }
            }
        }
        EventsCommand::Export {
            file,
            format,
            filters,
        } => {
            let filter = filters.filter(now_ms())?;
            let opened = ctx.open()?;
            let rows = opened.db.query_events(&filter, None)?;
            let text = export_text(&rows, format)?;
            if file.as_os_str() == "-" {
                out!("{text}");
            } else {
                write_atomically(&file, text.as_bytes())?;
                eprintln!("exported {} events to {}", rows.len(), file.display());
            }
            Ok(0)
        }
        EventsCommand::Replay {
            container_id,
            since,
            json,
        } => {
            let opened = ctx.open()?;
            if opened.db.get_container(&container_id)?.is_none()
                && opened.db.get_orphan(&container_id)?.is_none()
            {
                return Err(coded(
                    error_codes::CONTAINER_NOT_FOUND,
                    format!("container not found: {container_id}"),
                ));
            }
            let filter = EventFilter {
                container_id: Some(container_id),
                since_ms: since
                    .as_deref()
                    .map(|s| parse_time_bound(s, now_ms()))
                    .transpose()?,
                ..EventFilter::default()
            };
            let rows = opened.db.query_events(&filter, None)?;
            if json {
                print_json(&rows.iter().map(EventView::from).collect::<Vec<_>>())?;
            } else {
                for row in &rows {
                    outln!("{}", replay_line(row));
                }
            }
            Ok(0)
        }
    }
}

/// The export file's contents.
pub fn export_text(rows: &[EventRow], format: ExportFormat) -> Result<String> {
    Ok(match format {
        ExportFormat::Jsonl => {
            let mut out = String::new();
            for row in rows {
                out.push_str(&serde_json::to_string(&EventView::from(row))?);
                out.push('\n');
            }
            out
        }
        ExportFormat::Json => {
            let mut out = serde_json::to_string_pretty(
                &rows.iter().map(EventView::from).collect::<Vec<_>>(),
            )?;
            out.push('\n');
            out
        }
    })
}

fn write_atomically(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
