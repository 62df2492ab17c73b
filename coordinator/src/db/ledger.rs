//! The budget ledger (`ledger`), the budget settings (`meta`), warning
//! de-duplication (`budget_alerts`) and the watchdog's bookkeeping on tasks.
//! The arithmetic is [`crate::budget`]'s; this module only stores and sums.

use anyhow::Result;
use parhelia_proto::Usage;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{ContainerRef, Db};
use crate::budget::{History, LedgerRow, LedgerTotals, TaskLimits};
use crate::config::BudgetConfig;
use crate::ids::now_ms;
use crate::records::Spend;

/// `meta` keys of the settings `parhelia budget set` persists.
const CEILING_KEY: &str = "budget.ceiling_usd";
const DAILY_KEY: &str = "budget.daily_ceiling_usd";

/// One ledger row, as read for `budget show` / `budget history`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LedgerEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub task_id: String,
    pub session_id: Option<String>,
    pub container_id: Option<String>,
    pub amount_usd: f64,
    pub seconds: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// A $0 row saying Claude Code died with a model request in flight
    /// ([`note_unknown_request_in`]).
    pub unknown_request: bool,
}

/// The SQL that tells a [`note_unknown_request_in`] row (read by every view).
const UNKNOWN_REQUEST_SQL: &str =
    "coalesce(CASE WHEN kind = 'model' AND instr(details, 'unknown_request') > 0
                                        AND json_valid(details)
                                   THEN json_extract(details, '$.unknown_request') = 1 END, 0)";

impl Spend {
    pub fn add_entry(&mut self, e: &LedgerEntry) {
        if e.unknown_request {
            self.unknown_model_requests += 1;
        }
        self.add(
            &e.kind,
            e.amount_usd,
            [
                e.input_tokens,
                e.output_tokens,
                e.cache_creation_input_tokens,
                e.cache_read_input_tokens,
            ],
        );
    }
}

/// Which ledger rows a [`Spend`] sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendScope<'a> {
    Task(&'a str),
    Session(&'a str),
    /// Everything recorded from this time on (`i64::MIN`: everything).
    Since(i64),
}

/// The spend of a scope: its ledger rows folded by [`Spend::add`] in id
/// order. The one function behind every view's cost.
pub fn spend_in(conn: &rusqlite::Connection, scope: SpendScope<'_>) -> rusqlite::Result<Spend> {
    let (filter, key): (&str, rusqlite::types::Value) = match scope {
        SpendScope::Task(id) => ("task_id = ?1", id.to_string().into()),
        SpendScope::Session(id) => ("session_id = ?1", id.to_string().into()),
        SpendScope::Since(ms) => ("ts_ms >= ?1", ms.into()),
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT kind, amount_usd, input_tokens, output_tokens, cache_creation_input_tokens,
                cache_read_input_tokens, {UNKNOWN_REQUEST_SQL}
         FROM ledger WHERE {filter} ORDER BY id"
    ))?;
    let mut rows = stmt.query([key])?;
    let mut spend = Spend::default();
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let tokens = [
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get::<_, i64>(3)?.max(0) as u64,
            r.get::<_, i64>(4)?.max(0) as u64,
            r.get::<_, i64>(5)?.max(0) as u64,
        ];
        spend.add(&kind, r.get(1)?, tokens);
        if r.get::<_, bool>(6)? {
            spend.unknown_model_requests += 1;
        }
    }
    Ok(spend)
}

/// [`Db::last_heartbeat_ts`] on a connection (or in a transaction).
pub(crate) fn last_heartbeat_ts_in(
    conn: &rusqlite::Connection,
    container_id: &str,
) -> Result<Option<i64>> {
    Ok(conn.query_row(
        "SELECT max(ts_ms) FROM heartbeats WHERE container_id = ?1",
        [container_id],
        |r| r.get(0),
    )?)
}

/// [`Db::task_limits`] on a connection (or in a transaction).
pub(crate) fn task_limits_in(
    conn: &rusqlite::Connection,
    task_id: &str,
) -> Result<Option<(TaskLimits, String)>> {
    Ok(conn
        .query_row(
            "SELECT max_cost_usd, gpu, cpu, memory_mb, timeout_seconds, backend FROM tasks WHERE id = ?1",
            [task_id],
            |r| {
                Ok((
                    TaskLimits {
                        max_cost_usd: r.get(0)?,
                        gpu: r.get(1)?,
                        cpu: r.get(2)?,
                        memory_mb: r.get::<_, Option<i64>>(3)?.map(|m| m as u64),
                        timeout_seconds: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                    },
                    r.get(5)?,
                ))
            },
        )
        .optional()?)
}

/// [`Db::gpu_chosen`] on a connection (or in a transaction).
pub(crate) fn gpu_chosen_in(conn: &rusqlite::Connection, task_id: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT gpu_chosen FROM tasks WHERE id = ?1",
            [task_id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// [`Db::charge_compute`] on a connection (or in a transaction).
pub(crate) fn charge_compute_in(
    conn: &rusqlite::Connection,
    target: &ContainerRef,
    ts_ms: i64,
    amount_usd: f64,
    seconds: f64,
    details: &serde_json::Value,
) -> Result<()> {
    conn.execute(
        "INSERT INTO ledger (ts_ms, kind, task_id, session_id, container_id, amount_usd, seconds, details)
         VALUES (?1, 'compute', ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            ts_ms,
            target.task_id,
            target.session_id,
            target.container_id,
            amount_usd,
            seconds,
            details.to_string()
        ],
    )?;
    Ok(())
}

/// Folds the ledger rows after `totals.last_id` into `totals`, in id order.
pub fn fold_ledger_in(conn: &rusqlite::Connection, totals: &mut LedgerTotals) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, task_id, ts_ms, amount_usd FROM ledger WHERE id > ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([totals.last_id])?;
    while let Some(r) = rows.next()? {
        totals.add(&LedgerRow {
            id: r.get(0)?,
            task_id: r.get(1)?,
            ts_ms: r.get(2)?,
            amount_usd: r.get(3)?,
        });
    }
    Ok(())
}

/// An ended remote container whose compute cost has not been reconciled
/// with the provider's usage figures yet.
#[derive(Clone, Debug, PartialEq)]
pub struct UsagePending {
    pub target: ContainerRef,
    /// The provider's id (a Modal sandbox id).
    pub remote_id: String,
    /// When the container ended (`terminated_at_ms`, else when its state
    /// last changed).
    pub ended_at_ms: i64,
}

/// What reconciling one container recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsageReconciled {
    /// What the provider says the container cost.
    pub provider_cost_usd: f64,
    /// What the ledger had charged for it before (its `compute` rows).
    pub charged_usd: f64,
    /// The correction recorded: provider − charged (negative: refunded).
    pub amount_usd: f64,
}

/// The effective ceilings and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ceilings {
    pub global_usd: f64,
    /// `budget set` (the database) or `config`.
    pub global_source: &'static str,
    pub daily_usd: Option<f64>,
    pub daily_source: &'static str,
}

/// The most tokens of one kind one ledger entry records (the agent caps a
/// response's counts at the same figure).
pub const MAX_TOKENS_PER_ENTRY: u64 = 1_000_000_000_000;

/// Records the model charge a session's reported cost implies: the growth
/// of `session_cost_usd` over what the ledger already holds for the
/// session (the figure is the session's total across every process, so
/// recording increases sums correctly across resumes). Tokens are one
/// response's increment (`ModelSpend`), each kind capped at
/// [`MAX_TOKENS_PER_ENTRY`] (the figures come from the session's transcript).
/// `extra` is merged into the entry's details.
pub(crate) fn charge_model_in(
    tx: &rusqlite::Transaction<'_>,
    target: &ContainerRef,
    ts_ms: i64,
    session_cost_usd: f64,
    usage: Option<&Usage>,
    extra: Option<serde_json::Value>,
) -> Result<()> {
    let session_cost_usd = if session_cost_usd.is_finite() {
        session_cost_usd.clamp(0.0, 1e9)
    } else {
        0.0
    };
    let recorded: f64 = tx.query_row(
        "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE session_id = ?1 AND kind = 'model'",
        [&target.session_id],
        |r| r.get(0),
    )?;
    let delta = (session_cost_usd - recorded).max(0.0);
    let cap = |n: u64| n.min(MAX_TOKENS_PER_ENTRY);
    let tokens = usage.map(|u| {
        (
            cap(u.input_tokens),
            cap(u.output_tokens),
            cap(u.cache_creation_input_tokens),
            cap(u.cache_read_input_tokens),
        )
    });
    let has_tokens = tokens.is_some_and(|(a, b, c, d)| a.max(b).max(c).max(d) > 0);
    let mut details = serde_json::json!({ "session_cost_usd": session_cost_usd });
    if let (Some(serde_json::Value::Object(extra)), Some(map)) = (extra, details.as_object_mut()) {
        map.extend(extra);
    }
    if delta <= 1e-12 && !has_tokens {
        return Ok(());
    }
    let (input, output, cache_write, cache_read) = tokens.unwrap_or_default();
    tx.execute(
        "INSERT INTO ledger (ts_ms, kind, task_id, session_id, container_id, amount_usd,
                             input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens, details)
         VALUES (?1, 'model', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            ts_ms,
            target.task_id,
            target.session_id,
            target.container_id,
            if delta > 1e-12 { delta } else { 0.0 },
            input as i64,
            output as i64,
            cache_write as i64,
            cache_read as i64,
            details.to_string(),
        ],
    )?;
    Ok(())
}

/// Records that Claude Code died with a model request in flight (a $0 model
/// row, `details.unknown_request`): what that request cost, if anything, is
/// unknown. Once per container (a replayed journal adds nothing).
pub(crate) fn note_unknown_request_in(
    tx: &rusqlite::Transaction<'_>,
    target: &ContainerRef,
    ts_ms: i64,
) -> Result<()> {
    let noted: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM ledger WHERE container_id = ?1 AND kind = 'model'
                        AND instr(details, 'unknown_request') > 0)",
        [&target.container_id],
        |r| r.get(0),
    )?;
    if noted {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO ledger (ts_ms, kind, task_id, session_id, container_id, amount_usd, details)
         VALUES (?1, 'model', ?2, ?3, ?4, 0, ?5)",
        params![
            ts_ms,
            target.task_id,
            target.session_id,
            target.container_id,
            serde_json::json!({
                "unknown_request": true,
                "why": "Claude Code died with a model request in flight; if the API answered it, that spend is in no record",
            })
            .to_string(),
        ],
    )?;
    Ok(())
}

/// The watchdog's message when it stopped the task's session (`None`: it
/// did not).
pub(crate) fn budget_stop_in(
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
) -> Result<Option<String>> {
    Ok(tx
        .query_row(
            "SELECT budget_stop_message FROM tasks WHERE id = ?1 AND budget_stop_requested_at_ms IS NOT NULL",
            [task_id],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .map(|m| m.unwrap_or_else(|| "stopped by the budget watchdog".into())))
}

impl Db {
    /// [`note_unknown_request_in`] on its own: a dead agent's Claude Code whose
    /// transcript ends with an unanswered request (`parhelia-agent meter`).
    pub fn note_unknown_request(&self, target: &ContainerRef) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        note_unknown_request_in(&tx, target, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// What a scope cost ([`Spend`]), as every view shows it.
    pub fn spend(&self, scope: SpendScope<'_>) -> Result<Spend> {
        Ok(spend_in(&self.conn(), scope)?)
    }

    /// A model charge outside event ingestion ([`charge_model_in`] in its
    /// own transaction): the growth of the session's reported cost.
    pub fn charge_model(
        &self,
        target: &ContainerRef,
        ts_ms: i64,
        session_cost_usd: f64,
        usage: Option<&Usage>,
    ) -> Result<()> {
        self.charge_model_with(target, ts_ms, session_cost_usd, usage, None)
    }

    /// [`Db::charge_model`] with `extra` merged into the entry's details.
    pub fn charge_model_with(
        &self,
        target: &ContainerRef,
        ts_ms: i64,
        session_cost_usd: f64,
        usage: Option<&Usage>,
        extra: Option<serde_json::Value>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        charge_model_in(&tx, target, ts_ms, session_cost_usd, usage, extra)?;
        tx.commit()?;
        Ok(())
    }

    /// A compute charge (one heartbeat's interval).
    pub fn charge_compute(
        &self,
        target: &ContainerRef,
        ts_ms: i64,
        amount_usd: f64,
        seconds: f64,
        details: serde_json::Value,
    ) -> Result<()> {
        charge_compute_in(&self.conn(), target, ts_ms, amount_usd, seconds, &details)
    }

    /// Records the provider's id of a launched container (`None`: a local
    /// container, nothing to record).
    pub fn set_container_remote_id(
        &self,
        container_id: &str,
        remote_id: Option<&str>,
    ) -> Result<()> {
        let Some(remote_id) = remote_id else {
            return Ok(());
        };
        self.conn().execute(
            "UPDATE containers SET remote_id = ?2 WHERE id = ?1",
            params![container_id, remote_id],
        )?;
        Ok(())
    }

    /// Ended (`terminated`, `lost`, `failed`) containers of `backend` with a
    /// remote id whose usage has not been reconciled, oldest end first.
    pub fn containers_awaiting_usage(&self, backend: &str) -> Result<Vec<UsagePending>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, session_id, task_id, remote_id, coalesce(terminated_at_ms, state_changed_at_ms)
             FROM containers
             WHERE backend = ?1 AND remote_id IS NOT NULL AND usage_reconciled_at_ms IS NULL
               AND state IN ('terminated', 'lost', 'failed')
             ORDER BY 5, id",
        )?;
        let rows = stmt.query_map([backend], |r| {
            Ok(UsagePending {
                target: ContainerRef {
                    container_id: r.get(0)?,
                    session_id: r.get(1)?,
                    task_id: r.get(2)?,
                },
                remote_id: r.get(3)?,
                ended_at_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The compute the ledger holds for one container.
    pub fn container_compute_usd(&self, container_id: &str) -> Result<f64> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE container_id = ?1 AND kind = 'compute'",
            [container_id],
            |r| r.get(0),
        )?)
    }

    /// Reconciles a container's compute with the provider's figure, in one
    /// transaction: one `compute` row of provider − charged (dated when the
    /// container ended, `seconds` 0, details naming both figures), and the
    /// container marked reconciled. `None` when it was reconciled already
    /// (nothing is written).
    pub fn reconcile_container_usage(
        &self,
        pending: &UsagePending,
        provider: &str,
        provider_cost_usd: f64,
        now_ms: i64,
    ) -> Result<Option<UsageReconciled>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let target = &pending.target;
        let marked = tx.execute(
            "UPDATE containers SET usage_reconciled_at_ms = ?2
             WHERE id = ?1 AND usage_reconciled_at_ms IS NULL",
            params![target.container_id, now_ms],
        )?;
        if marked == 0 {
            return Ok(None);
        }
        let charged_usd: f64 = tx.query_row(
            "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE container_id = ?1 AND kind = 'compute'",
            [&target.container_id],
            |r| r.get(0),
        )?;
        let amount_usd = provider_cost_usd - charged_usd;
        let mut details = serde_json::Map::new();
        details.insert("reconciled_with".into(), provider.into());
        details.insert(format!("{provider}_cost_usd"), provider_cost_usd.into());
        details.insert("charged_usd".into(), charged_usd.into());
        details.insert("sandbox_id".into(), pending.remote_id.clone().into());
        tx.execute(
            "INSERT INTO ledger (ts_ms, kind, task_id, session_id, container_id, amount_usd, seconds, details)
             VALUES (?1, 'compute', ?2, ?3, ?4, ?5, 0, ?6)",
            params![
                pending.ended_at_ms,
                target.task_id,
                target.session_id,
                target.container_id,
                amount_usd,
                serde_json::Value::Object(details).to_string(),
            ],
        )?;
        tx.commit()?;
        Ok(Some(UsageReconciled {
            provider_cost_usd,
            charged_usd,
            amount_usd,
        }))
    }

    /// Marks a container's usage reconciled without a charge (the provider
    /// never reported it). False when it was marked already.
    pub fn give_up_container_usage(&self, container_id: &str, now_ms: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE containers SET usage_reconciled_at_ms = ?2
             WHERE id = ?1 AND usage_reconciled_at_ms IS NULL",
            params![container_id, now_ms],
        )? == 1)
    }

    /// The time of a container's latest stored heartbeat.
    pub fn last_heartbeat_ts(&self, container_id: &str) -> Result<Option<i64>> {
        last_heartbeat_ts_in(&self.conn(), container_id)
    }

    /// Sets (or with `None` removes) a task's own ceiling, its `--max-cost`.
    /// `false`: no such task.
    pub fn set_task_max_cost(&self, task_id: &str, usd: Option<f64>) -> Result<bool> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE tasks SET max_cost_usd = ?2 WHERE id = ?1",
            rusqlite::params![task_id, usd],
        )?;
        Ok(changed == 1)
    }

    /// A task's budget and resources, and its backend.
    pub fn task_limits(&self, task_id: &str) -> Result<Option<(TaskLimits, String)>> {
        task_limits_in(&self.conn(), task_id)
    }

    /// The GPU type the task's latest launch got (of its `--gpu` list).
    pub fn gpu_chosen(&self, task_id: &str) -> Result<Option<String>> {
        gpu_chosen_in(&self.conn(), task_id)
    }

    /// Records the GPU type a launch of the task got.
    pub fn set_gpu_chosen(&self, task_id: &str, gpu: Option<&str>) -> Result<()> {
        self.conn().execute(
            "UPDATE tasks SET gpu_chosen = ?2 WHERE id = ?1",
            rusqlite::params![task_id, gpu],
        )?;
        Ok(())
    }

    /// Ledger total of a task (every attempt, every kind): its cost.
    pub fn task_spent_usd(&self, task_id: &str) -> Result<f64> {
        Ok(self.spend(SpendScope::Task(task_id))?.cost_usd)
    }

    /// Ledger total of a task by kind: (compute, model, storage).
    pub fn task_spent_by_kind(&self, task_id: &str) -> Result<(f64, f64, f64)> {
        let spend = self.spend(SpendScope::Task(task_id))?;
        Ok((spend.compute_usd, spend.model_usd, spend.storage_usd))
    }

    /// The message ids the coordinator charged from a session's transcripts after its
    /// agent died (ledger details `left_over_message_ids`), at most 65,536.
    pub fn left_over_message_ids(&self, session_id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT DISTINCT ids.value FROM ledger, json_each(ledger.details, '$.left_over_message_ids') AS ids
             WHERE ledger.session_id = ?1 AND ledger.kind = 'model'
               AND instr(ledger.details, 'left_over_message_ids') > 0
               AND json_valid(ledger.details) AND typeof(ids.value) = 'text'
             LIMIT 65536",
        )?;
        let ids = statement
            .query_map([session_id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// The responses the coordinator charged from a dead agent's transcripts
    /// (rows with `left_over_message_ids`), each with a share of its row's amount
    /// (the whole amount on the row's first id): what a resumed agent must count
    /// as charged, so its session total includes them and it never charges them
    /// again. At most 65,536.
    pub fn left_over_charges(&self, session_id: &str) -> Result<Vec<(String, f64)>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT ids.value, CASE WHEN ids.key = 0 THEN ledger.amount_usd ELSE 0 END
             FROM ledger, json_each(ledger.details, '$.left_over_message_ids') AS ids
             WHERE ledger.session_id = ?1 AND ledger.kind = 'model'
               AND instr(ledger.details, 'left_over_message_ids') > 0
               AND json_valid(ledger.details) AND typeof(ids.value) = 'text'
             ORDER BY ledger.id, ids.key
             LIMIT 65536",
        )?;
        let charges = statement
            .query_map([session_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(charges)
    }

    /// Model cost the ledger holds for a session.
    pub fn session_model_usd(&self, session_id: &str) -> Result<f64> {
        let conn = self.conn();
        Ok(conn.query_row(
            "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE session_id = ?1 AND kind = 'model'",
            [session_id],
            |r| r.get(0),
        )?)
    }

    /// Ledger total from `since_ms` on (everything with `i64::MIN`).
    pub fn spent_since_usd(&self, since_ms: i64) -> Result<f64> {
        Ok(self.spend(SpendScope::Since(since_ms))?.cost_usd)
    }

    /// Ledger rows from `since_ms` on, in order.
    pub fn ledger_entries(&self, since_ms: i64) -> Result<Vec<LedgerEntry>> {
        self.entries_where("ts_ms >= ?1", since_ms.into())
    }

    /// A task's ledger rows (every attempt, every kind), in the order
    /// [`spend_in`] folds them: what `task spend` draws over time.
    pub fn task_ledger_entries(&self, task_id: &str) -> Result<Vec<LedgerEntry>> {
        self.entries_where("task_id = ?1", task_id.to_string().into())
    }

    fn entries_where(&self, filter: &str, key: rusqlite::types::Value) -> Result<Vec<LedgerEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT id, ts_ms, kind, task_id, session_id, container_id, amount_usd, seconds,
                    input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
                    {UNKNOWN_REQUEST_SQL}
             FROM ledger WHERE {filter} ORDER BY id"
        ))?;
        let rows = stmt.query_map([key], |r| {
            Ok(LedgerEntry {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                kind: r.get(2)?,
                task_id: r.get(3)?,
                session_id: r.get(4)?,
                container_id: r.get(5)?,
                amount_usd: r.get(6)?,
                seconds: r.get(7)?,
                input_tokens: r.get::<_, i64>(8)? as u64,
                output_tokens: r.get::<_, i64>(9)? as u64,
                cache_creation_input_tokens: r.get::<_, i64>(10)? as u64,
                cache_read_input_tokens: r.get::<_, i64>(11)? as u64,
                unknown_request: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What ended tasks of this type on this backend cost (ledger totals).
    pub fn similar_history(&self, task_type: &str, backend: &str) -> Result<Option<History>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT coalesce(sum(l.amount_usd), 0),
                    coalesce(sum(CASE WHEN l.kind = 'model' THEN l.amount_usd END), 0)
             FROM tasks t LEFT JOIN ledger l ON l.task_id = t.id
             WHERE t.task_type = ?1 AND t.backend = ?2 AND t.status IN ('completed', 'failed')
             GROUP BY t.id",
        )?;
        let totals: Vec<(f64, f64)> = stmt
            .query_map(params![task_type, backend], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if totals.is_empty() {
            return Ok(None);
        }
        let n = totals.len() as f64;
        Ok(Some(History {
            tasks: totals.len() as u64,
            min_usd: totals.iter().map(|t| t.0).fold(f64::INFINITY, f64::min),
            avg_usd: totals.iter().map(|t| t.0).sum::<f64>() / n,
            max_usd: totals.iter().map(|t| t.0).fold(0.0, f64::max),
            max_model_usd: totals.iter().map(|t| t.1).fold(0.0, f64::max),
        }))
    }

    /// The effective ceilings: `budget set` values win over the config.
    pub fn ceilings(&self, config: &BudgetConfig) -> Result<Ceilings> {
        let conn = self.conn();
        let get = |key: &str| -> rusqlite::Result<Option<String>> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        let global = get(CEILING_KEY)?.and_then(|v| v.parse::<f64>().ok());
        let daily = get(DAILY_KEY)?;
        Ok(Ceilings {
            global_usd: global.unwrap_or(config.default_ceiling_usd),
            global_source: if global.is_some() {
                "budget set"
            } else {
                "config"
            },
            daily_usd: match &daily {
                Some(v) => v.parse::<f64>().ok(),
                None => config.daily_ceiling_usd,
            },
            daily_source: if daily.is_some() {
                "budget set"
            } else {
                "config"
            },
        })
    }

    /// `parhelia budget set`: persists the global and/or daily ceiling
    /// (`Some(None)`: no daily ceiling).
    pub fn set_ceilings(&self, global: Option<f64>, daily: Option<Option<f64>>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let put = |key: &str, value: String| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
        };
        if let Some(g) = global {
            put(CEILING_KEY, g.to_string())?;
        }
        if let Some(d) = daily {
            put(
                DAILY_KEY,
                d.map(|x| x.to_string()).unwrap_or_else(|| "none".into()),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// True the first time `scope` is alerted (warnings are given once).
    pub fn alert_once(&self, scope: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(conn.execute(
            "INSERT OR IGNORE INTO budget_alerts (scope, ts_ms) VALUES (?1, ?2)",
            params![scope, now_ms()],
        )? == 1)
    }

    /// The watchdog's decision, recorded before it stops the session (so
    /// the session's CANCELLED end reads as a budget failure). True when
    /// this call recorded it (the task was running and not yet stopped).
    pub fn request_budget_stop(&self, task_id: &str, message: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(conn.execute(
            "UPDATE tasks SET budget_stop_requested_at_ms = ?2, budget_stop_message = ?3, updated_at_ms = ?2
             WHERE id = ?1 AND status = 'running' AND budget_stop_requested_at_ms IS NULL",
            params![task_id, now_ms(), message],
        )? == 1)
    }

    /// A resume or retry continues under the ceilings as they are now.
    pub fn clear_budget_stop(&self, task_id: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE tasks SET budget_stop_requested_at_ms = NULL, budget_stop_message = NULL WHERE id = ?1",
            [task_id],
        )?;
        Ok(())
    }

    /// Running tasks the watchdog decided to stop (after a restart: stop them).
    pub fn pending_budget_stops(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM tasks WHERE status = 'running' AND budget_stop_requested_at_ms IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The watchdog's message for a task, if it stopped it.
    pub fn budget_stop_message(&self, task_id: &str) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let message = budget_stop_in(&tx, task_id)?;
        tx.commit()?;
        Ok(message)
    }
}

impl Db {
    /// Spend against every ceiling that applies to `task_id` (or only the
    /// global and daily ones), at `now_ms`.
    pub fn standing(
        &self,
        task_id: Option<&str>,
        config: &BudgetConfig,
        now_ms: i64,
    ) -> Result<crate::budget::Standing> {
        let ceilings = self.ceilings(config)?;
        let task_ceiling_usd = match task_id {
            Some(id) => self.task_limits(id)?.and_then(|(l, _)| l.max_cost_usd),
            None => None,
        };
        // The running totals, brought up to the ledger's newest row: what a scan of
        // the whole ledger would sum, for the rows added since the last check only.
        let totals = self.ledger_totals()?;
        Ok(crate::budget::Standing {
            task_spent_usd: task_id.map_or(0.0, |id| totals.task_usd(id)),
            task_ceiling_usd,
            global_spent_usd: totals.global_usd,
            global_ceiling_usd: ceilings.global_usd,
            day_spent_usd: totals.since_day_usd(crate::budget::day_start_ms(now_ms)),
            day_ceiling_usd: ceilings.daily_usd,
        })
    }

    /// The ledger's running totals ([`LedgerTotals`]) with every row committed so far
    /// folded in (built from the whole ledger on first use after a start).
    pub fn ledger_totals(&self) -> Result<std::sync::MutexGuard<'_, LedgerTotals>> {
        let mut totals = self.ledger_totals.lock().unwrap_or_else(|p| p.into_inner());
        let conn = self.conn();
        fold_ledger_in(&conn, &mut totals)?;
        Ok(totals)
    }

    /// The task's latest ledger charge.
    pub fn last_charge_usd(&self, task_id: &str) -> Result<f64> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT amount_usd FROM ledger WHERE task_id = ?1 ORDER BY id DESC LIMIT 1",
                [task_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0.0))
    }
}

/// A session whose data on a remote volume is charged for storage.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageMeter {
    pub session_id: String,
    pub task_id: String,
    pub backend: String,
    /// When the session's first container on the backend was created (the
    /// volume held nothing of it before).
    pub started_at_ms: i64,
    /// The last measurement: when, and the bytes it found.
    pub measured_at_ms: i64,
    pub bytes: u64,
}

/// What one measurement charged.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageCharge {
    /// The interval charged, at the bytes the previous measurement found.
    pub seconds: f64,
    pub charged_bytes: u64,
    pub amount_usd: f64,
}

impl Db {
    /// Starts a meter for every session with a container on `backend` that
    /// has none (clock from its first such container, at 0 bytes). Returns
    /// how many were started.
    pub fn start_storage_meters(&self, backend: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO storage_meters
                 (session_id, task_id, backend, started_at_ms, measured_at_ms, bytes)
             SELECT s.id, s.task_id, ?1, min(c.created_at_ms), min(c.created_at_ms), 0
             FROM sessions s JOIN containers c ON c.session_id = s.id AND c.backend = ?1
             GROUP BY s.id",
            [backend],
        )?)
    }

    /// Meters not stopped, oldest first.
    pub fn active_storage_meters(&self) -> Result<Vec<StorageMeter>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session_id, task_id, backend, started_at_ms, measured_at_ms, bytes
             FROM storage_meters WHERE stopped_at_ms IS NULL ORDER BY started_at_ms, session_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(StorageMeter {
                session_id: r.get(0)?,
                task_id: r.get(1)?,
                backend: r.get(2)?,
                started_at_ms: r.get(3)?,
                measured_at_ms: r.get(4)?,
                bytes: r.get::<_, i64>(5)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a measurement of a session's bytes on its volume at `now_ms`,
    /// in one transaction: one `storage` row charging the interval since the
    /// last measurement at the bytes that one found (none when that is 0 USD),
    /// and the meter moved on. A clock that went back charges nothing and
    /// never moves the meter back. `None`: no active meter.
    pub fn record_storage_measurement(
        &self,
        session_id: &str,
        now_ms: i64,
        bytes: u64,
        usd_per_gib_month: f64,
    ) -> Result<Option<StorageCharge>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let meter: Option<(String, i64, i64)> = tx
            .query_row(
                "SELECT task_id, measured_at_ms, bytes FROM storage_meters
                 WHERE session_id = ?1 AND stopped_at_ms IS NULL",
                [session_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((task_id, measured_at_ms, prev_bytes)) = meter else {
            return Ok(None);
        };
        let prev_bytes = prev_bytes.max(0) as u64;
        let elapsed_ms = now_ms.saturating_sub(measured_at_ms).max(0);
        let seconds = elapsed_ms as f64 / 1000.0;
        let amount_usd = crate::rates::storage_charge_usd(prev_bytes, seconds, usd_per_gib_month);
        if amount_usd > 0.0 {
            tx.execute(
                "INSERT INTO ledger (ts_ms, kind, task_id, session_id, amount_usd, seconds, details)
                 VALUES (?1, 'storage', ?2, ?3, ?4, ?5, ?6)",
                params![
                    now_ms,
                    task_id,
                    session_id,
                    amount_usd,
                    seconds,
                    serde_json::json!({
                        "bytes": prev_bytes,
                        "measured_bytes": bytes,
                        "from_ms": measured_at_ms,
                        "usd_per_gib_month": usd_per_gib_month,
                        "rate_table": crate::rates::embedded().version,
                    })
                    .to_string(),
                ],
            )?;
        }
        tx.execute(
            "UPDATE storage_meters SET measured_at_ms = max(measured_at_ms, ?2), bytes = ?3
             WHERE session_id = ?1",
            params![session_id, now_ms, bytes.min(i64::MAX as u64) as i64],
        )?;
        tx.commit()?;
        Ok(Some(StorageCharge {
            seconds,
            charged_bytes: prev_bytes,
            amount_usd,
        }))
    }

    /// Stops a session's meter (its data is gone from the volume). False
    /// when it was not running.
    pub fn stop_storage_meter(&self, session_id: &str, now_ms: i64) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE storage_meters SET stopped_at_ms = ?2 WHERE session_id = ?1 AND stopped_at_ms IS NULL",
            params![session_id, now_ms],
        )? == 1)
    }

    /// Whether the session is still recorded (not deleted with its task).
    pub fn session_exists(&self, session_id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM sessions WHERE id = ?1", [session_id], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }
}
