//! Model cost across every Claude Code process a session has run.
//!
//! Measured with Claude Code 2.1.330 (`docs/dev/claude-code-notes.md`, and re-checked
//! for this module): `result.total_cost_usd` is cumulative for the whole *session* as
//! Claude Code remembers it — in stream-json input mode it grows turn by turn, and a
//! `--resume` process starts from the cost restored from the transcript (0.0042 before,
//! 0.0056 after one more 0.0014 turn). Summing it across processes would double count,
//! and trusting it alone would lose money spent in turns a restored transcript no longer
//! remembers. So the agent counts turns: each `result` line's own cost
//! (`model_usage_since_last_result`) is added once, and a session's cost is what earlier
//! processes recorded plus this process's turns.
//!
//! What earlier processes recorded is the largest `session_cost_usd` in any journal of the
//! session's volume (`<volume>/journal/*.jsonl`, earlier containers and, after an agent
//! restart, our own): each container started from its predecessors' total, so the
//! latest total covers them all. A turn cut off by a crash never reported its cost and is
//! not counted by the turn sum — but it is metered: since per-response metering
//! ([`crate::spend`]), each response's spend is journaled as a `ModelSpend` as soon as it
//! appears in the transcript, and [`prior_spend`] gives the message ids earlier agents
//! charged so that a resumed session charges only responses no journal has.

use std::path::Path;

use parhelia_proto::{Event, event};

/// The largest session cost recorded in `events` (0 when none).
pub fn recorded_session_cost(events: &[Event]) -> f64 {
    events
        .iter()
        .filter_map(|event| match &event.kind {
            Some(event::Kind::TurnResult(result)) => Some(result.session_cost_usd),
            Some(event::Kind::SessionFinished(finished)) => Some(finished.session_cost_usd),
            Some(event::Kind::ModelSpend(spend)) => Some(spend.session_cost_usd),
            _ => None,
        })
        .fold(0.0, f64::max)
}

/// The largest session cost recorded in any journal in `journal_dir`.
pub fn prior_session_cost(journal_dir: &Path) -> f64 {
    prior_spend(journal_dir).session_cost_usd
}

/// What earlier agents of this session recorded: the largest session total, and every
/// response they charged (`ModelSpend`: message id, token increment, cost increment).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriorSpend {
    pub session_cost_usd: f64,
    pub charges: Vec<(String, crate::spend::Tokens, f64)>,
}

impl PriorSpend {
    fn add(&mut self, events: &[Event]) {
        self.session_cost_usd = self.session_cost_usd.max(recorded_session_cost(events));
        for event in events {
            if let Some(event::Kind::ModelSpend(spend)) = &event.kind {
                // The meter bounds ids and tracked entries itself.
                self.charges.push((
                    spend.message_id.clone(),
                    crate::spend::Tokens::from_usage(&spend.usage.unwrap_or_default()),
                    crate::spend::clamp_cost(spend.cost_usd),
                ));
            }
        }
    }
}

/// [`PriorSpend`] over every journal in `journal_dir`.
pub fn prior_spend(journal_dir: &Path) -> PriorSpend {
    let mut prior = PriorSpend::default();
    let Ok(entries) = std::fs::read_dir(journal_dir) else {
        return prior;
    };
    for path in entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
    {
        match crate::journal::read_all_lenient(&path) {
            Ok(events) => prior.add(&events),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "failed to read an earlier journal; its cost is not counted");
            }
        }
    }
    prior
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::{SessionFinished, TurnResult};

    fn result(session_cost: f64) -> Event {
        Event {
            kind: Some(event::Kind::TurnResult(TurnResult {
                // What Claude Code reported is deliberately not what is counted.
                claude_total_cost_usd: 99.0,
                session_cost_usd: session_cost,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn finished(session_cost: f64) -> Event {
        Event {
            kind: Some(event::Kind::SessionFinished(SessionFinished {
                session_cost_usd: session_cost,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_total_covers_everything_before_it() {
        assert_eq!(recorded_session_cost(&[]), 0.0);
        assert_eq!(
            recorded_session_cost(&[result(0.25), result(0.5), finished(0.5)]),
            0.5
        );
    }

    #[test]
    fn the_largest_total_over_all_journals_is_the_prior_cost() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, events: &[Event]| {
            let text: String = events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap() + "\n")
                .collect();
            std::fs::write(dir.path().join(name), text).unwrap();
        };
        write("ctr-a.jsonl", &[result(0.5), finished(0.5)]);
        // The next container started from 0.5 and added 0.25.
        write("ctr-b.jsonl", &[result(0.75), finished(0.75)]);
        std::fs::write(dir.path().join("ctr-c.jsonl"), "{\"seq\":1}\n{torn").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(prior_session_cost(dir.path()), 0.75);
        assert_eq!(prior_session_cost(&dir.path().join("missing")), 0.0);
    }

    #[test]
    fn metered_responses_of_earlier_journals_are_remembered() {
        use parhelia_proto::{ModelSpend, Usage};
        let dir = tempfile::tempdir().unwrap();
        let spend = |id: &str, cost: f64, total: f64| Event {
            kind: Some(event::Kind::ModelSpend(ModelSpend {
                message_id: id.into(),
                usage: Some(Usage {
                    input_tokens: 10,
                    ..Default::default()
                }),
                cost_usd: cost,
                session_cost_usd: total,
                priced: true,
                ..Default::default()
            })),
            ..Default::default()
        };
        let text: String = [spend("m1", 0.25, 0.25), spend("m2", 0.5, 0.75)]
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join("ctr-a.jsonl"), text).unwrap();
        let prior = prior_spend(dir.path());
        // A cut-off turn's metered spend counts even without a result.
        assert_eq!(prior.session_cost_usd, 0.75);
        let ids: Vec<&str> = prior.charges.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
        assert_eq!(prior.charges[1].1.input, 10);
    }
}
