//! A task's spend over time (`parhelia task spend`, the MCP tool
//! `parhelia_task_spend`, the dashboard's spend chart): its ledger rows
//! folded in id order by [`Spend::add_entry`], the fold every cost figure
//! uses ([`crate::db::spend_in`]), so the last point is the task's cost as
//! `task show` prints it, to the bit.
//!
//! A long task can hold many rows (a compute charge per metering pass); the
//! series keeps at most [`MAX_POINTS`] points, evenly spaced over the rows,
//! always the first and the last (each point is the running total at its
//! row, never an average, so a thinned chart still passes through true
//! figures).

use serde::Serialize;

use crate::db::LedgerEntry;
use crate::ids::rfc3339_ms;
use crate::records::Spend;

/// The most points a series carries.
pub const MAX_POINTS: usize = 2_000;

/// The running totals after one ledger row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpendPoint {
    pub ts_ms: i64,
    pub at: String,
    /// The row's kind: `compute`, `model` or `storage`.
    pub kind: String,
    /// The row's own amount (negative: a refund, e.g. a reconciliation
    /// with the provider's usage figures).
    pub amount_usd: f64,
    pub compute_usd: f64,
    pub model_usd: f64,
    pub storage_usd: f64,
    /// compute + model + storage so far.
    pub total_usd: f64,
}

/// `task spend --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpendSeries {
    pub task_id: String,
    /// The task's own ceiling (`--max-cost`), if it has one.
    pub ceiling_usd: Option<f64>,
    /// Ledger rows of the task.
    pub rows: usize,
    /// Whether points were left out ([`MAX_POINTS`]).
    pub thinned: bool,
    pub points: Vec<SpendPoint>,
    /// The fold of every row: the task's cost and breakdown, as `task show`.
    pub spend: Spend,
}

/// Folds `entries` (in ledger id order) into a series.
pub fn series(task_id: &str, ceiling_usd: Option<f64>, entries: &[LedgerEntry]) -> SpendSeries {
    let mut spend = Spend::default();
    let mut all = Vec::with_capacity(entries.len().min(MAX_POINTS));
    let keep = keep_every(entries.len());
    for (i, e) in entries.iter().enumerate() {
        spend.add_entry(e);
        let last = i + 1 == entries.len();
        if i % keep == 0 || last {
            all.push(SpendPoint {
                ts_ms: e.ts_ms,
                at: rfc3339_ms(e.ts_ms),
                kind: e.kind.clone(),
                amount_usd: e.amount_usd,
                compute_usd: spend.compute_usd,
                model_usd: spend.model_usd,
                storage_usd: spend.storage_usd,
                total_usd: spend.cost_usd,
            });
        }
    }
    SpendSeries {
        task_id: task_id.to_string(),
        ceiling_usd,
        rows: entries.len(),
        thinned: all.len() < entries.len(),
        points: all,
        spend,
    }
}

/// Keep one row in this many (and the last) so at most [`MAX_POINTS`] remain.
fn keep_every(rows: usize) -> usize {
    if rows <= MAX_POINTS {
        1
    } else {
        // ceil(rows / (MAX_POINTS - 1)) leaves room for the last row.
        rows.div_ceil(MAX_POINTS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: i64, kind: &str, amount: f64) -> LedgerEntry {
        LedgerEntry {
            id,
            ts_ms: 1_700_000_000_000 + id * 1000,
            kind: kind.to_string(),
            task_id: "t".into(),
            session_id: None,
            container_id: None,
            amount_usd: amount,
            seconds: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
            unknown_request: false,
        }
    }

    #[test]
    fn no_rows_no_points() {
        let s = series("t", Some(1.0), &[]);
        assert!(s.points.is_empty());
        assert_eq!(s.spend.cost_usd, 0.0);
        assert!(!s.thinned);
    }

    proptest! {
        /// The last point is the fold of every row (the task's cost), the
        /// first row is kept, points stay in order, and there are never more
        /// than MAX_POINTS.
        #[test]
        fn the_last_point_is_the_tasks_cost(
            rows in prop::collection::vec((0u8..3, -5.0f64..50.0), 0..6000)
        ) {
            let entries: Vec<LedgerEntry> = rows
                .iter()
                .enumerate()
                .map(|(i, (k, a))| entry(i as i64 + 1, ["compute", "model", "storage"][*k as usize], *a))
                .collect();
            let s = series("t", None, &entries);
            let mut folded = Spend::default();
            for e in &entries {
                folded.add_entry(e);
            }
            prop_assert!(s.points.len() <= MAX_POINTS);
            prop_assert_eq!(s.thinned, s.points.len() < entries.len());
            if let Some(last) = s.points.last() {
                prop_assert_eq!(last.total_usd.to_bits(), folded.cost_usd.to_bits());
                prop_assert_eq!(last.ts_ms, entries.last().unwrap().ts_ms);
                prop_assert_eq!(s.points[0].ts_ms, entries[0].ts_ms);
            } else {
                prop_assert!(entries.is_empty());
            }
            prop_assert!(s.points.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms));
            prop_assert_eq!(s.spend.cost_usd.to_bits(), folded.cost_usd.to_bits());
        }
    }
}
