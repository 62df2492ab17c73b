//! Entry points for the cargo-fuzz targets in `fuzz/` (and the stable regression test
//! `tests/fuzz_regressions.rs` that replays their inputs): each takes bytes a session can
//! write, runs them through the same functions the agent's readers use, and panics only
//! when a property below is broken (or when the code under test panics).
//!
//! Not part of the agent's API: hidden from the docs, stable only for the fuzz crate.

use parhelia_proto::{Event, event};

use crate::headless_io::{LineParser, news_of_line};
use crate::stream_json::{MAX_COST_USD, StreamLine, TOOL_RESULT_MAX_BYTES};
use crate::{cost, hooks, journal, stream_json, transcript};

/// A whole journal file through `Journal::open`'s scan, `Journal::read_from`'s line
/// parser and the lenient reader the cost total uses. What the scan accepts reads back
/// with the same seqs from any starting seq; the lenient reader sees at least those
/// events; every event survives the journal's encoding.
pub fn journal(data: &[u8]) {
    if let Ok(scan) = journal::scan(data) {
        let end = usize::try_from(scan.end).expect("end fits");
        assert!(end <= data.len(), "the scan ends inside the file");
        let total = scan.line_offsets.len();
        let all = read_range(data, &scan, 1, usize::MAX);
        assert_eq!(all.len(), total);
        for (index, event) in all.iter().enumerate() {
            assert_eq!(event.seq, index as u64 + 1, "seq is the line number");
        }
        if total > 1 {
            let from = total / 2 + 1;
            let middle = read_range(data, &scan, from as u64, 2);
            assert_eq!(middle[..], all[from - 1..(from + 1).min(total)]);
        }
        let lenient = journal::parse_lenient(data).expect("a slice reads");
        assert!(
            lenient.len() >= total,
            "the lenient reader keeps the scanned events"
        );
        assert_eq!(lenient[..total], all[..]);
    }
    let lenient = journal::parse_lenient(data).expect("a slice reads");
    let cost = cost::recorded_session_cost(&lenient);
    assert!(cost.is_finite() && cost >= 0.0, "a recorded cost: {cost}");
    for event in &lenient {
        round_trip(event);
    }
}

/// `Journal::read_from(from_seq, max)` over `data` as scanned, without the file.
fn read_range(data: &[u8], scan: &journal::JournalScan, from_seq: u64, max: usize) -> Vec<Event> {
    let total = scan.line_offsets.len() as u64;
    if from_seq > total || max == 0 {
        return Vec::new();
    }
    let last = (from_seq - 1).saturating_add(max as u64).min(total);
    let start = scan.line_offsets[(from_seq - 1) as usize] as usize;
    let stop = if last == total {
        scan.end
    } else {
        scan.line_offsets[last as usize]
    } as usize;
    let count = (last - from_seq + 1) as usize;
    journal::parse_lines(&data[start..stop], from_seq, count)
        .expect("read_from reads what the scan accepted")
}

/// An event reads back equal from the line the journal writes for it.
fn round_trip(event: &Event) {
    let line = serde_json::to_vec(event).expect("wire types encode");
    let back: Event = serde_json::from_slice(&line).unwrap_or_else(|e| {
        panic!(
            "the journal cannot read back its own line {}: {e}",
            String::from_utf8_lossy(&line)
        )
    });
    assert_eq!(&back, event, "{}", String::from_utf8_lossy(&line));
}

/// A followed Claude Code output file, line by line as `headless_io` splits it, through
/// both line parsers, and the transcript's last reported total.
pub fn stream_json(data: &[u8]) {
    let parsers: [LineParser; 2] = [stream_json::parse_line, transcript::parse_line];
    for line in data.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        for parse in parsers {
            if let Some(parsed) = news_of_line(line, parse) {
                check_stream_line(&parsed);
            }
        }
    }
    let total = transcript::last_reported_total_in(&String::from_utf8_lossy(data));
    check_cost(total);
}

fn check_cost(usd: f64) {
    assert!(
        usd.is_finite() && (0.0..=MAX_COST_USD).contains(&usd),
        "a cost outside 0..={MAX_COST_USD}: {usd}"
    );
}

fn check_stream_line(parsed: &StreamLine) {
    for cost in [parsed.turn_cost_usd, parsed.reported_total_usd]
        .into_iter()
        .flatten()
    {
        check_cost(cost);
    }
    for kind in &parsed.kinds {
        match kind {
            event::Kind::ToolResult(result) => {
                assert!(result.content.len() <= TOOL_RESULT_MAX_BYTES);
            }
            event::Kind::TurnResult(result) => check_cost(result.claude_total_cost_usd),
            _ => {}
        }
        round_trip(&Event {
            seq: 1,
            ts_ms: 0,
            kind: Some(kind.clone()),
        });
    }
}

/// A hook payload as the hook client reads it, and the report it forwards as the
/// listener reads it: the same report on both sides.
pub fn hook_payload(data: &[u8]) {
    let Ok(report) = hooks::parse_report(data) else {
        return;
    };
    let _ = hooks::status_for_hook(&report);
    let forwarded = serde_json::to_vec(&report).expect("a report encodes");
    let back = hooks::parse_report(&forwarded).expect("the listener reads what the client sends");
    assert_eq!(back, report);
}

/// A transcript (or subagent transcript) as the spend meter reads it: the bytes split
/// into two chunks at a point the first byte chooses (lines may straddle it), through
/// the reader's line splitter and [`crate::spend::parse_line`], metered with a price
/// table. Properties: no panic; token counts within `MAX_TOKENS`; every charge finite,
/// in `0..=MAX_COST_USD`, non-empty; the metered total never goes down; feeding the
/// same bytes again charges nothing (repeated lines are never counted twice, up to the
/// tracked-id bound); every `ModelSpend` survives the journal's encoding.
pub fn spend(data: &[u8]) {
    use crate::spend::{MAX_TOKENS, Meter, ModelPrice, observations_in};
    let split = data.first().map_or(0, |b| *b as usize * data.len() / 256);
    let (a, b) = data.split_at(split.min(data.len()));
    let prices = std::collections::BTreeMap::from([(
        "claude-opus-5-5".to_string(),
        ModelPrice {
            input_usd_per_mtok: 4.0,
            output_usd_per_mtok: 20.0,
            cache_write_usd_per_mtok: 5.0,
            cache_read_usd_per_mtok: 0.2,
        },
    )]);
    let mut meter = Meter::new(prices);
    let mut last = 0.0;
    let observations = observations_in(&[a, b], false);
    for observation in &observations {
        let t = observation.tokens;
        assert!(t.input.max(t.output).max(t.cache_write).max(t.cache_read) <= MAX_TOKENS);
        if let Some(charge) = meter.observe(observation) {
            check_cost(charge.cost_usd);
            assert!(!charge.tokens.is_zero(), "a charge adds tokens");
            round_trip(&Event {
                seq: 1,
                ts_ms: 0,
                kind: Some(event::Kind::ModelSpend(parhelia_proto::ModelSpend {
                    model: charge.model,
                    message_id: charge.message_id,
                    subagent: charge.subagent,
                    usage: Some(charge.tokens.to_usage()),
                    cost_usd: charge.cost_usd,
                    session_cost_usd: meter.metered_usd(),
                    priced: charge.priced,
                })),
            });
        }
        let metered = meter.metered_usd();
        check_cost(metered);
        assert!(metered >= last, "the metered total went down");
        last = metered;
    }
    if meter.tracked() < crate::spend::MAX_TRACKED_IDS {
        for observation in &observations {
            assert_eq!(meter.observe(observation), None, "a line charged twice");
        }
    }
}
