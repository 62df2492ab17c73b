//! Model spend, metered per API response from Claude Code's transcript.
//!
//! Claude Code writes one `assistant` line per content block of every model response
//! into its transcript (`<config>/projects/<dir>/<session>.jsonl`; a subagent's into
//! `<config>/projects/<dir>/<session>/subagents/agent-*.jsonl`), each repeating the
//! response's `message.id`, `message.model` and `message.usage`. The lines are written as
//! the response streams in, so spend is known per response, not only at the end of a turn
//! — a turn that is cancelled, fails or never ends is still metered. Why the transcript and
//! not OpenTelemetry: `docs/dev/cost-metering.md`.
//!
//! Two parts:
//! - [`parse_line`] and [`Meter`]: pure and total. A line in, at most one
//!   [`Observation`] out; the meter keeps, per message id, the largest count of each token
//!   kind seen and reports only increments ([`Charge`]), so the repeated lines of one
//!   response are counted once. Everything is bounded: line length ([`MAX_LINE_BYTES`],
//!   enforced by the reader), id and model length, token counts ([`MAX_TOKENS`]), costs
//!   (`0..=`[`crate::stream_json::MAX_COST_USD`]) and the number of ids tracked
//!   ([`MAX_TRACKED_IDS`], oldest forgotten first).
//! - [`TranscriptReader`]: follows the transcript and every subagent transcript
//!   incrementally (never through a symbolic link, a bounded number of bytes per poll).
//!
//! The transcript is written by the session (hostile input): a forged line can add
//! spend, never remove what was charged (the meter never goes down and the supervisor's
//! session total is monotonic). See `docs/security/spend-metering.md`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use parhelia_proto::Usage;
use serde_json::Value;

use crate::stream_json::MAX_COST_USD;

/// The longest transcript line read; a longer one is skipped (up to its newline) without
/// being held in memory. Claude Code's lines carry one content block each.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// The most message ids remembered; past it the oldest is forgotten (its lines, should
/// they come again, would be charged again: more, never less).
pub const MAX_TRACKED_IDS: usize = 65_536;
/// The longest message id believed (Claude Code's are about 30 characters); a line with a
/// longer one is ignored.
pub const MAX_ID_BYTES: usize = 256;
/// A model name longer than this is cut (and is then in no price table).
pub const MAX_MODEL_BYTES: usize = 128;
/// The largest count of one token kind one response is believed to have.
pub const MAX_TOKENS: u64 = 1_000_000_000_000;
/// The most subagent transcripts followed.
pub const MAX_SUBAGENT_FILES: usize = 1024;
/// The most directory entries of `subagents/` looked at in one poll.
pub const MAX_DIR_ENTRIES_SCANNED: usize = 4096;
/// The most bytes read from one file in one poll.
pub const MAX_POLL_BYTES: usize = 4 * 1024 * 1024;
/// The model name Claude Code gives its own error messages: never priced.
pub const SYNTHETIC_MODEL: &str = "<synthetic>";

/// USD per million tokens of each kind, for one model (the spec's `model_prices`).
pub use parhelia_contract::spec::ModelPrice;

/// What `tokens` cost at `price`, clamped to `0..=MAX_COST_USD`.
pub fn cost_usd(price: &ModelPrice, tokens: &Tokens) -> f64 {
    let cost = (tokens.input as f64 * price.input_usd_per_mtok
        + tokens.output as f64 * price.output_usd_per_mtok
        + tokens.cache_write as f64 * price.cache_write_usd_per_mtok
        + tokens.cache_read as f64 * price.cache_read_usd_per_mtok)
        / 1_000_000.0;
    clamp_cost(cost)
}

/// A cost clamped to `0..=MAX_COST_USD` (NaN is 0).
pub fn clamp_cost(cost: f64) -> f64 {
    if cost.is_nan() {
        0.0
    } else {
        cost.clamp(0.0, MAX_COST_USD)
    }
}

/// Token counts of one response, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

impl Tokens {
    pub fn is_zero(&self) -> bool {
        *self == Tokens::default()
    }

    fn max(&self, other: &Tokens) -> Tokens {
        Tokens {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_write: self.cache_write.max(other.cache_write),
            cache_read: self.cache_read.max(other.cache_read),
        }
    }

    fn saturating_sub(&self, other: &Tokens) -> Tokens {
        Tokens {
            input: self.input.saturating_sub(other.input),
            output: self.output.saturating_sub(other.output),
            cache_write: self.cache_write.saturating_sub(other.cache_write),
            cache_read: self.cache_read.saturating_sub(other.cache_read),
        }
    }

    pub fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input,
            output_tokens: self.output,
            cache_creation_input_tokens: self.cache_write,
            cache_read_input_tokens: self.cache_read,
        }
    }

    pub fn from_usage(usage: &Usage) -> Tokens {
        Tokens {
            input: usage.input_tokens.min(MAX_TOKENS),
            output: usage.output_tokens.min(MAX_TOKENS),
            cache_write: usage.cache_creation_input_tokens.min(MAX_TOKENS),
            cache_read: usage.cache_read_input_tokens.min(MAX_TOKENS),
        }
    }
}

/// What one transcript line says about a model response.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub message_id: String,
    pub model: String,
    /// From a subagent transcript, or a line marked `isSidechain`.
    pub subagent: bool,
    /// The response's usage as the line states it (cumulative for the response).
    pub tokens: Tokens,
}

/// Reads one transcript line. Only an `assistant` line with a `message.id` (at most
/// [`MAX_ID_BYTES`]) and a `message.usage` object gives an observation; anything else,
/// including a line that is not JSON, gives `None`. Never panics.
pub fn parse_line(line: &[u8], subagent_file: bool) -> Option<Observation> {
    if line.len() > MAX_LINE_BYTES {
        return None;
    }
    let value: Value = serde_json::from_slice(line).ok()?;
    if value.get("type")?.as_str()? != "assistant" {
        return None;
    }
    let message = value.get("message")?;
    let message_id = message.get("id")?.as_str()?;
    if message_id.is_empty() || message_id.len() > MAX_ID_BYTES {
        return None;
    }
    let usage = message.get("usage")?.as_object()?;
    let count = |key: &str| {
        usage
            .get(key)
            .and_then(|n| {
                n.as_u64().or_else(|| {
                    // A float count (or a huge one) is believed up to the cap; a negative
                    // one is none.
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f > 0.0)
                        .map(|f| f.min(MAX_TOKENS as f64) as u64)
                })
            })
            .unwrap_or(0)
            .min(MAX_TOKENS)
    };
    let tokens = Tokens {
        input: count("input_tokens"),
        output: count("output_tokens"),
        cache_write: count("cache_creation_input_tokens"),
        cache_read: count("cache_read_input_tokens"),
    };
    let model = message.get("model").and_then(Value::as_str).unwrap_or("");
    Some(Observation {
        message_id: message_id.to_string(),
        model: cut(model, MAX_MODEL_BYTES).to_string(),
        subagent: subagent_file || value.get("isSidechain").and_then(Value::as_bool) == Some(true),
        tokens,
    })
}

fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What one observation adds to the bill.
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    pub message_id: String,
    pub model: String,
    pub subagent: bool,
    /// The increment over what was already charged for this message id.
    pub tokens: Tokens,
    /// The increment's price; 0 when not priced.
    pub cost_usd: f64,
    /// False when the model is not in the price table or is `<synthetic>`.
    pub priced: bool,
}

/// Per-response dedupe and pricing. Pure.
#[derive(Debug, Default)]
pub struct Meter {
    prices: BTreeMap<String, ModelPrice>,
    seen: HashMap<String, Tokens>,
    /// Insertion order of `seen`, to forget the oldest first.
    order: VecDeque<String>,
    /// Every priced increment charged, earlier agents' included (see [`Meter::remember`]).
    metered_usd: f64,
}

impl Meter {
    /// A meter pricing by `prices` (invalid prices are dropped: never invent a price).
    pub fn new(prices: BTreeMap<String, ModelPrice>) -> Meter {
        Meter {
            prices: prices.into_iter().filter(|(_, p)| p.is_valid()).collect(),
            ..Meter::default()
        }
    }

    /// The sum of every priced increment charged (or remembered).
    pub fn metered_usd(&self) -> f64 {
        self.metered_usd
    }

    /// Whether a response with `message_id` was charged (or remembered) and is still tracked.
    pub fn knows(&self, message_id: &str) -> bool {
        self.seen.contains_key(message_id)
    }

    /// How many message ids are tracked.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Records what an earlier agent already charged for `message_id` (a `ModelSpend`
    /// event from an earlier journal): later observations charge only beyond it.
    pub fn remember(&mut self, message_id: &str, tokens: Tokens, cost_usd: f64) {
        self.metered_usd = clamp_cost(self.metered_usd + clamp_cost(cost_usd));
        if message_id.is_empty() || message_id.len() > MAX_ID_BYTES {
            return;
        }
        let tokens = Tokens::from_usage(&tokens.to_usage());
        self.track(message_id, |known| {
            known.input = known.input.saturating_add(tokens.input).min(MAX_TOKENS);
            known.output = known.output.saturating_add(tokens.output).min(MAX_TOKENS);
            known.cache_write = known
                .cache_write
                .saturating_add(tokens.cache_write)
                .min(MAX_TOKENS);
            known.cache_read = known
                .cache_read
                .saturating_add(tokens.cache_read)
                .min(MAX_TOKENS);
        });
    }

    fn track(&mut self, message_id: &str, update: impl FnOnce(&mut Tokens)) {
        if let Some(known) = self.seen.get_mut(message_id) {
            update(known);
            return;
        }
        while self.seen.len() >= MAX_TRACKED_IDS {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.seen.remove(&oldest);
                }
                None => break,
            }
        }
        let mut tokens = Tokens::default();
        update(&mut tokens);
        self.seen.insert(message_id.to_string(), tokens);
        self.order.push_back(message_id.to_string());
    }

    /// What `observation` adds: `None` when it adds no token.
    pub fn observe(&mut self, observation: &Observation) -> Option<Charge> {
        let before = self
            .seen
            .get(&observation.message_id)
            .copied()
            .unwrap_or_default();
        let after = before.max(&observation.tokens);
        let increment = after.saturating_sub(&before);
        if increment.is_zero() {
            return None;
        }
        self.track(&observation.message_id, |known| *known = after);
        let price = (observation.model != SYNTHETIC_MODEL)
            .then(|| self.prices.get(&observation.model))
            .flatten();
        let cost_usd = price.map_or(0.0, |p| cost_usd(p, &increment));
        self.metered_usd = clamp_cost(self.metered_usd + cost_usd);
        Some(Charge {
            message_id: observation.message_id.clone(),
            model: observation.model.clone(),
            subagent: observation.subagent,
            tokens: increment,
            cost_usd,
            priced: price.is_some(),
        })
    }
}

/// One followed file: where reading got to, and the incomplete line after it.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    subagent: bool,
    offset: u64,
    pending: Vec<u8>,
    /// Inside an overlong line: drop bytes up to its newline.
    skipping: bool,
}

impl Tail {
    fn new(path: PathBuf, subagent: bool) -> Tail {
        Tail {
            path,
            subagent,
            offset: 0,
            pending: Vec::new(),
            skipping: false,
        }
    }

    /// Reads what was appended since the last poll (at most [`MAX_POLL_BYTES`]) and
    /// returns the complete lines' observations.
    fn poll(&mut self, out: &mut Vec<Observation>) {
        let Some(mut file) = crate::session_file::open_regular(&self.path) else {
            return;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return;
        };
        if len < self.offset {
            // Truncated (or replaced): read it again from the start. Message ids already
            // charged stay charged; the meter's dedupe keeps a re-read from charging twice.
            self.offset = 0;
            self.pending.clear();
            self.skipping = false;
        }
        if len == self.offset || file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut chunk = Vec::new();
        let Ok(read) = file.take(MAX_POLL_BYTES as u64).read_to_end(&mut chunk) else {
            return;
        };
        self.offset += read as u64;
        self.feed(&chunk, out);
    }

    fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Observation>) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(newline) => {
                    let (line, rest) = bytes.split_at(newline);
                    bytes = &rest[1..];
                    if self.skipping {
                        self.skipping = false;
                        continue;
                    }
                    if self.pending.len() + line.len() > MAX_LINE_BYTES {
                        self.pending.clear();
                        continue;
                    }
                    self.pending.extend_from_slice(line);
                    let line = std::mem::take(&mut self.pending);
                    out.extend(parse_line(&line, self.subagent));
                }
                None => {
                    if !self.skipping {
                        if self.pending.len() + bytes.len() > MAX_LINE_BYTES {
                            self.pending.clear();
                            self.skipping = true;
                        } else {
                            self.pending.extend_from_slice(bytes);
                        }
                    }
                    bytes = &[];
                }
            }
        }
    }
}

/// The observations in `chunks` read one after the other as one file, split into lines
/// as [`TranscriptReader`] splits them (for the fuzz target and tests).
#[doc(hidden)]
pub fn observations_in(chunks: &[&[u8]], subagent: bool) -> Vec<Observation> {
    let mut tail = Tail::new(PathBuf::new(), subagent);
    let mut out = Vec::new();
    for chunk in chunks {
        tail.feed(chunk, &mut out);
    }
    out
}

/// A real directory (not a symbolic link to one).
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Follows a Claude session's transcript and its subagents' transcripts.
#[derive(Debug)]
pub struct TranscriptReader {
    main: Tail,
    side_dir: PathBuf,
    subagents: BTreeMap<PathBuf, Tail>,
}

impl TranscriptReader {
    /// Follows `<project_dir>/<claude_session_id>.jsonl` and
    /// `<project_dir>/<claude_session_id>/subagents/*.jsonl`, from their starts.
    pub fn new(project_dir: &Path, claude_session_id: &str) -> TranscriptReader {
        TranscriptReader {
            main: Tail::new(
                project_dir.join(format!("{claude_session_id}.jsonl")),
                false,
            ),
            side_dir: project_dir.join(claude_session_id),
            subagents: BTreeMap::new(),
        }
    }

    /// Everything appended since the last poll, main transcript first.
    pub fn poll(&mut self) -> Vec<Observation> {
        let mut out = Vec::new();
        self.main.poll(&mut out);
        let dir = self.side_dir.join("subagents");
        if is_real_dir(&self.side_dir)
            && is_real_dir(&dir)
            && let Ok(entries) = std::fs::read_dir(&dir)
        {
            // Bounded work per poll, however many entries the session puts there.
            for entry in entries.filter_map(Result::ok).take(MAX_DIR_ENTRIES_SCANNED) {
                if self.subagents.len() >= MAX_SUBAGENT_FILES {
                    break;
                }
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "jsonl")
                    && !self.subagents.contains_key(&path)
                {
                    self.subagents.insert(path.clone(), Tail::new(path, true));
                }
            }
        }
        for tail in self.subagents.values_mut() {
            tail.poll(&mut out);
        }
        out
    }
}

/// How much of a headless run's stream [`stream_observations`] reads, from its end.
const STREAM_TAIL_BYTES: u64 = 4 << 20;

/// The responses a headless run's stream-json (`stream.jsonl`, Claude Code's stdout)
/// shows from byte `start` on (at most its last [`STREAM_TAIL_BYTES`]), in order. Claude
/// Code prints a response's `assistant` line as its content ends, with the usage of the
/// response's start (input and cache counts final, output counts not), and writes the
/// final usage to its transcript a moment later: a response killed in between is on the
/// stream only, and its figure here is a lower bound. The file is the session's: never
/// through a link, bounded, and a line that is not a response is skipped.
pub fn stream_observations(stream: &Path, start: u64) -> Vec<Observation> {
    let Some((bytes, skip_first)) = stream_tail(stream, start) else {
        return Vec::new();
    };
    bytes
        .split(|b| *b == b'\n')
        .skip(usize::from(skip_first))
        .filter_map(|line| {
            let parent = serde_json::from_slice::<Value>(line)
                .ok()?
                .get("parent_tool_use_id")
                .is_some_and(|p| p.as_str().is_some_and(|p| !p.is_empty()));
            parse_line(line, parent)
        })
        // A `<synthetic>` message (Claude Code's own text for an API error) or one with
        // no tokens is no billed response: its absence from a transcript says nothing.
        .filter(|o| o.model != SYNTHETIC_MODEL && !o.tokens.is_zero())
        .collect()
}

/// The last [`STREAM_TAIL_BYTES`] of a run's stream from `start` (a link or a
/// non-regular file gives nothing), and whether it begins inside a line (that partial
/// line is to be skipped).
fn stream_tail(stream: &Path, start: u64) -> Option<(Vec<u8>, bool)> {
    let mut file = crate::session_file::open_regular(stream)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = start.max(len.saturating_sub(STREAM_TAIL_BYTES));
    if from >= len || file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(STREAM_TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    Some((bytes, from > start))
}

/// Whether a headless run's stream (from `start`) ends waiting for a model reply:
/// its last message line is a `user` one (a tool's result, printed the moment the
/// tool ended, which Claude Code then sends at once) with no `assistant` reply or
/// `result` after it. Claude Code prints to its stream as things happen but writes its
/// transcript in batches, so a SIGKILL can leave the transcript ending with the tool
/// call while the stream shows the result went out: the request's spend is unknown.
pub fn stream_awaits_reply(stream: &Path, start: u64) -> bool {
    let Some((bytes, skip_first)) = stream_tail(stream, start) else {
        return false;
    };
    stream_awaits_reply_in(&bytes, skip_first)
}

/// [`stream_awaits_reply`] of a stream's bytes.
pub fn stream_awaits_reply_in(bytes: &[u8], skip_first: bool) -> bool {
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .skip(usize::from(skip_first))
        .collect();
    for line in lines.into_iter().rev() {
        let Ok(value) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        match value["type"].as_str() {
            Some("assistant") | Some("result") => return false,
            Some("user") => return true,
            _ => {}
        }
    }
    false
}

/// What a session's transcripts hold that no journal charged: the responses Claude Code
/// made after its agent's last `ModelSpend` (e.g. it kept running after the agent was
/// killed). `parhelia-agent meter` prints it for the coordinator, which charges it when
/// it ends a dead agent's left-over processes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Unjournaled {
    /// Every distinct message id charged here.
    pub message_ids: Vec<String>,
    pub usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    /// Responses whose model the price table does not know (tokens counted, $0).
    pub unpriced: u64,
    /// The main transcript ends with a request that has no reply
    /// ([`crate::transcript::request_in_flight`]): its spend, if any, is unknown.
    pub request_in_flight: bool,
}

/// Meters the transcripts under `project_dir` for `claude_session_id` against what the
/// journals already charged (`journaled`: `cost::prior_spend(journal_dir).charges`).
pub fn unjournaled(
    project_dir: &Path,
    claude_session_id: &str,
    journaled: Vec<(String, Tokens, f64)>,
    prices: BTreeMap<String, ModelPrice>,
    already_charged: &[String],
    stream: Option<&Path>,
) -> Unjournaled {
    let mut meter = Meter::new(prices);
    for (id, tokens, cost) in journaled {
        meter.remember(&id, tokens, cost);
    }
    // Responses the coordinator charged earlier from these same transcripts: whole.
    let whole = Tokens {
        input: MAX_TOKENS,
        output: MAX_TOKENS,
        cache_write: MAX_TOKENS,
        cache_read: MAX_TOKENS,
    };
    for id in already_charged.iter().take(MAX_TRACKED_IDS) {
        meter.remember(id, whole, 0.0);
    }
    let mut reader = TranscriptReader::new(project_dir, claude_session_id);
    let mut out = Unjournaled {
        request_in_flight: crate::transcript::request_in_flight(
            &project_dir.join(format!("{claude_session_id}.jsonl")),
        ),
        ..Unjournaled::default()
    };
    // A bounded number of polls: each reads what is there (the files are no longer
    // written: their writer is gone).
    for _ in 0..4096 {
        let observations = reader.poll();
        if observations.is_empty() {
            break;
        }
        for observation in &observations {
            if let Some(charge) = meter.observe(observation) {
                out.add(&charge);
            }
        }
    }
    // Responses the run printed and never wrote to a transcript: their usage as printed
    // (a lower bound); their full spend is unknown.
    if let Some(stream) = stream {
        if stream_awaits_reply(stream, 0) {
            out.request_in_flight = true;
        }
        for observation in stream_observations(stream, 0) {
            if meter.knows(&observation.message_id) {
                continue;
            }
            out.request_in_flight = true;
            if let Some(charge) = meter.observe(&observation) {
                out.add(&charge);
            }
        }
    }
    out
}

impl Unjournaled {
    fn add(&mut self, charge: &Charge) {
        if !self.message_ids.contains(&charge.message_id)
            && self.message_ids.len() < MAX_TRACKED_IDS
        {
            self.message_ids.push(charge.message_id.clone());
        }
        self.usd = clamp_cost(self.usd + charge.cost_usd);
        self.input_tokens = self.input_tokens.saturating_add(charge.tokens.input);
        self.output_tokens = self.output_tokens.saturating_add(charge.tokens.output);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(charge.tokens.cache_write);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(charge.tokens.cache_read);
        if !charge.priced {
            self.unpriced += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opus() -> BTreeMap<String, ModelPrice> {
        BTreeMap::from([(
            "claude-opus-5-5".to_string(),
            ModelPrice {
                input_usd_per_mtok: 4.0,
                output_usd_per_mtok: 20.0,
                cache_write_usd_per_mtok: 5.0,
                cache_read_usd_per_mtok: 0.2,
            },
        )])
    }

    fn line(id: &str, model: &str, input: u64, output: u64) -> String {
        format!(
            r#"{{"type":"assistant","isSidechain":false,"message":{{"id":"{id}","model":"{model}","content":[{{"type":"text","text":"x"}}],"usage":{{"input_tokens":{input},"output_tokens":{output},"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}}}}"#
        )
    }

    /// A stream-json `assistant` line: the usage of the response's start (output 1).
    fn stream_line(id: &str, input: u64, parent: Option<&str>) -> String {
        let parent = parent.map_or("null".to_string(), |p| format!("\"{p}\""));
        format!(
            r#"{{"type":"assistant","message":{{"id":"{id}","model":"claude-opus-5-5","content":[{{"type":"text","text":"x"}}],"usage":{{"input_tokens":{input},"output_tokens":1}}}},"parent_tool_use_id":{parent}}}"#
        )
    }

    /// The responses a run printed: from this run's start, subagents marked, anything
    /// else skipped, never through a link.
    #[test]
    fn stream_observations_read_this_runs_responses() {
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("stream.jsonl");
        let earlier = format!("{}\n", stream_line("m0", 100, None));
        let synthetic = r#"{"type":"assistant","message":{"id":"s1","model":"<synthetic>","content":[{"type":"text","text":"API Error: 400"}],"usage":{"input_tokens":0,"output_tokens":0}},"parent_tool_use_id":null}"#;
        let text = format!(
            "{earlier}{}\n{{\"type\":\"user\"}}\nnot json\n{synthetic}\n{}\n{}",
            stream_line("m1", 200, None),
            stream_line("m2", 300, Some("toolu_1")),
            // A last line cut off mid-write.
            &stream_line("m3", 400, None)[..40],
        );
        std::fs::write(&stream, &text).unwrap();
        let seen = stream_observations(&stream, earlier.len() as u64);
        let ids: Vec<(&str, bool, u64)> = seen
            .iter()
            .map(|o| (o.message_id.as_str(), o.subagent, o.tokens.input))
            .collect();
        assert_eq!(ids, [("m1", false, 200), ("m2", true, 300)]);
        assert_eq!(stream_observations(&stream, 0).len(), 3);
        assert!(stream_observations(&stream, text.len() as u64).is_empty());
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&stream, &link).unwrap();
        assert!(stream_observations(&link, 0).is_empty());
    }

    /// A stream whose last message is a tool's result (printed when the tool ended,
    /// and sent at once) with no reply or `result` after it awaits a reply: the shape
    /// a SIGKILL left in chaos rounds whose transcript still ended with the tool call
    /// (its batch with the result was not yet written). Line shapes as Claude Code
    /// 2.1.330 prints them.
    #[test]
    fn a_stream_ending_with_a_tool_result_awaits_a_reply() {
        let init = r#"{"type":"system","subtype":"init","session_id":"s"}"#;
        let call = r#"{"type":"assistant","message":{"id":"m1","model":"claude-opus-5-5","content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":10,"output_tokens":1}},"parent_tool_use_id":null,"session_id":"s"}"#;
        let result = r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result","content":"a.txt","is_error":false}]},"parent_tool_use_id":null,"session_id":"s"}"#;
        let reply = &stream_line("m2", 20, None);
        let done = r#"{"type":"result","subtype":"success","is_error":false,"result":"done"}"#;
        let join = |lines: &[&str]| lines.join("\n") + "\n";
        let awaits = |lines: &[&str]| stream_awaits_reply_in(join(lines).as_bytes(), false);
        assert!(!awaits(&[init]));
        assert!(!awaits(&[init, call]), "a tool still running sent nothing");
        assert!(awaits(&[init, call, result]));
        assert!(awaits(&[
            init,
            call,
            result,
            "not json",
            r#"{"type":"system"}"#
        ]));
        assert!(!awaits(&[init, call, result, reply]));
        assert!(!awaits(&[init, call, result, reply, done]));
        // A subagent's tool result awaits the subagent's reply the same way.
        let sub = result.replace(
            r#""parent_tool_use_id":null"#,
            r#""parent_tool_use_id":"toolu_9""#,
        );
        assert!(awaits(&[init, call, &sub]));
        // From a run's start: an earlier run's dangling result is not this run's.
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("stream.jsonl");
        let earlier = join(&[init, call, result]);
        std::fs::write(&stream, format!("{earlier}{}", join(&[init]))).unwrap();
        assert!(stream_awaits_reply(&stream, 0));
        assert!(!stream_awaits_reply(&stream, earlier.len() as u64));
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&stream, &link).unwrap();
        assert!(!stream_awaits_reply(&link, 0), "never through a link");
    }

    /// What a dead agent's session holds beyond its journals: the coordinator charges
    /// exactly the responses no `ModelSpend` recorded (`parhelia-agent meter`).
    #[test]
    fn unjournaled_spend_is_what_no_journal_charged() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project");
        std::fs::create_dir_all(project.join("s1/subagents")).unwrap();
        std::fs::write(
            project.join("s1.jsonl"),
            format!(
                "{}\n{}\n{}\n",
                line("m1", "claude-opus-5-5", 1000, 100),
                line("m2", "claude-opus-5-5", 2000, 200),
                line("m2", "claude-opus-5-5", 2000, 200)
            ),
        )
        .unwrap();
        std::fs::write(
            project.join("s1/subagents/agent-a.jsonl"),
            format!("{}\n", line("m3", "claude-opus-5-5", 500, 50)),
        )
        .unwrap();
        // The agent journaled m1 before it died.
        let journals = dir.path().join("journal");
        std::fs::create_dir_all(&journals).unwrap();
        let (journal, _) = crate::journal::Journal::open(&journals.join("ctr-1.jsonl")).unwrap();
        journal
            .append(parhelia_proto::event::Kind::ModelSpend(
                parhelia_proto::ModelSpend {
                    model: "claude-opus-5-5".into(),
                    message_id: "m1".into(),
                    usage: Some(Usage {
                        input_tokens: 1000,
                        output_tokens: 100,
                        ..Default::default()
                    }),
                    cost_usd: 0.006,
                    session_cost_usd: 0.006,
                    priced: true,
                    ..Default::default()
                },
            ))
            .unwrap();
        let found = unjournaled(
            &project,
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &[],
            None,
        );
        assert_eq!(found.message_ids, ["m2", "m3"]);
        assert_eq!((found.input_tokens, found.output_tokens), (2500, 250));
        // 2500 × $4/M + 250 × $20/M
        assert!((found.usd - 0.015).abs() < 1e-12, "{found:?}");
        assert_eq!(found.unpriced, 0);
        // What the coordinator already charged from them is not charged again.
        let rest = unjournaled(
            &project,
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &["m2".to_string()],
            None,
        );
        assert_eq!(rest.message_ids, ["m3"]);
        assert_eq!((rest.input_tokens, rest.output_tokens), (500, 50));
        // Its last message is a reply: nothing was in flight.
        assert!(!found.request_in_flight);
        // Nothing left once everything is journaled.
        let none = unjournaled(
            &dir.path().join("missing"),
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &[],
            None,
        );
        assert_eq!(none, Unjournaled::default());
        // A tool result after the last reply: a request was in flight when it died.
        let mut text = std::fs::read_to_string(project.join("s1.jsonl")).unwrap();
        text.push_str(
            "{\"type\":\"user\",\"message\":{\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":\"ok\"}]}}\n",
        );
        std::fs::write(project.join("s1.jsonl"), text).unwrap();
        let cut = unjournaled(
            &project,
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &[],
            None,
        );
        assert!(cut.request_in_flight, "{cut:?}");
        // A headless run printed m1 (in a transcript) and m4 (killed before it was
        // written): m4 is charged at what its stream line shows, and is unknown.
        std::fs::write(
            project.join("s1.jsonl"),
            line("m1", "claude-opus-5-5", 1000, 100),
        )
        .unwrap();
        let stream = dir.path().join("stream.jsonl");
        std::fs::write(
            &stream,
            format!(
                "{}\n{}\n",
                stream_line("m1", 1000, None),
                stream_line("m4", 600, None)
            ),
        )
        .unwrap();
        let printed = unjournaled(
            &project,
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &[],
            Some(&stream),
        );
        assert_eq!(printed.message_ids, ["m3", "m4"]);
        assert!(printed.request_in_flight, "{printed:?}");
        // m3: 500 × $4/M + 50 × $20/M; m4: 600 × $4/M + 1 × $20/M
        assert!(
            (printed.usd - (0.003 + 0.00242)).abs() < 1e-12,
            "{printed:?}"
        );
        // Printed and written: nothing unknown.
        std::fs::write(&stream, format!("{}\n", stream_line("m1", 1000, None))).unwrap();
        let written = unjournaled(
            &project,
            "s1",
            crate::cost::prior_spend(&journals).charges,
            opus(),
            &[],
            Some(&stream),
        );
        assert!(!written.request_in_flight, "{written:?}");
    }

    fn feed(meter: &mut Meter, text: &str, subagent: bool) -> Vec<Charge> {
        text.lines()
            .filter_map(|l| parse_line(l.as_bytes(), subagent))
            .filter_map(|o| meter.observe(&o))
            .collect()
    }

    #[test]
    fn repeated_lines_of_one_response_charge_once() {
        let mut meter = Meter::new(opus());
        let text = [
            line("m1", "claude-opus-5-5", 470, 1),
            line("m1", "claude-opus-5-5", 470, 55),
            line("m1", "claude-opus-5-5", 470, 55),
            line("m2", "claude-opus-5-5", 30, 10),
        ]
        .join("\n");
        let charges = feed(&mut meter, &text, false);
        assert_eq!(charges.len(), 3);
        assert_eq!(charges[0].tokens.output, 1);
        assert_eq!(charges[1].tokens.input, 0, "the increment only");
        assert_eq!(charges[1].tokens.output, 54);
        let total: u64 = charges.iter().map(|c| c.tokens.input).sum();
        assert_eq!(total, 500);
        // 470 in + 55 out on opus = 0.00298, as Claude Code reports it; plus m2.
        let expected = 0.00298 + (30.0 * 4.0 + 10.0 * 20.0) / 1e6;
        assert!((meter.metered_usd() - expected).abs() < 1e-12);
        // Feeding it all again charges nothing.
        assert!(feed(&mut meter, &text, false).is_empty());
    }

    #[test]
    fn unknown_and_synthetic_models_count_tokens_and_charge_nothing() {
        let mut meter = Meter::new(opus());
        let charges = feed(
            &mut meter,
            &[
                line("m1", "some-future-model", 100, 20),
                line("m2", SYNTHETIC_MODEL, 5, 5),
            ]
            .join("\n"),
            false,
        );
        assert_eq!(charges.len(), 2);
        assert!(charges.iter().all(|c| !c.priced && c.cost_usd == 0.0));
        assert_eq!(charges[0].tokens.input, 100);
        assert_eq!(meter.metered_usd(), 0.0);
    }

    #[test]
    fn remembered_ids_are_not_charged_again() {
        let mut meter = Meter::new(opus());
        meter.remember(
            "m1",
            Tokens {
                input: 470,
                output: 55,
                ..Tokens::default()
            },
            0.00298,
        );
        let charges = feed(
            &mut meter,
            &[
                line("m1", "claude-opus-5-5", 470, 55),
                line("m2", "claude-opus-5-5", 10, 0),
            ]
            .join("\n"),
            false,
        );
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].message_id, "m2");
    }

    #[test]
    fn hostile_lines_give_nothing_or_bounded_figures() {
        let mut meter = Meter::new(opus());
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"type":"assistant"}"#,
            r#"{"type":"assistant","message":{"id":7,"usage":{}}}"#,
            r#"{"type":"assistant","message":{"id":"","usage":{"input_tokens":5}}}"#,
            r#"{"type":"assistant","message":{"id":"x","usage":[1]}}"#,
            r#"{"type":"user","message":{"id":"x","usage":{"input_tokens":5}}}"#,
        ] {
            assert_eq!(parse_line(bad.as_bytes(), false), None, "{bad}");
        }
        let long_id = "i".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            parse_line(line(&long_id, "m", 1, 1).as_bytes(), false),
            None
        );
        // Negative, fractional, huge counts.
        let o = parse_line(
            br#"{"type":"assistant","message":{"id":"h","model":"claude-opus-5-5","usage":{"input_tokens":-5,"output_tokens":2.7,"cache_creation_input_tokens":1e300,"cache_read_input_tokens":18446744073709551615}}}"#,
            false,
        )
        .unwrap();
        assert_eq!(o.tokens.input, 0);
        assert_eq!(o.tokens.output, 2);
        assert_eq!(o.tokens.cache_write, MAX_TOKENS);
        assert_eq!(o.tokens.cache_read, MAX_TOKENS);
        let charge = meter.observe(&o).unwrap();
        assert!(charge.cost_usd.is_finite() && charge.cost_usd <= MAX_COST_USD);
        // A sidechain line in the main transcript is a subagent's.
        let o = parse_line(
            br#"{"type":"assistant","isSidechain":true,"message":{"id":"s","usage":{"input_tokens":1}}}"#,
            false,
        )
        .unwrap();
        assert!(o.subagent);
        // A long model name is cut on a character boundary.
        let model = "é".repeat(100);
        let o = parse_line(line("m", &model, 1, 1).as_bytes(), false).unwrap();
        assert!(o.model.len() <= MAX_MODEL_BYTES);
    }

    #[test]
    fn invalid_prices_are_dropped_not_used() {
        let mut prices = opus();
        prices.insert(
            "nan".into(),
            ModelPrice {
                input_usd_per_mtok: f64::NAN,
                ..ModelPrice::default()
            },
        );
        let mut meter = Meter::new(prices);
        let charge = meter
            .observe(&parse_line(line("m", "nan", 5, 5).as_bytes(), false).unwrap())
            .unwrap();
        assert!(!charge.priced);
    }

    #[test]
    fn tracked_ids_are_bounded() {
        let mut meter = Meter::new(opus());
        for i in 0..MAX_TRACKED_IDS + 10 {
            meter.observe(&Observation {
                message_id: format!("m{i}"),
                model: "claude-opus-5-5".into(),
                subagent: false,
                tokens: Tokens {
                    input: 1,
                    ..Tokens::default()
                },
            });
        }
        assert_eq!(meter.tracked(), MAX_TRACKED_IDS);
    }

    #[test]
    fn the_reader_follows_appends_truncation_and_subagents_without_links() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path();
        let main = project.join("s.jsonl");
        std::fs::write(
            &main,
            line("m1", "claude-opus-5-5", 1, 1) + "\n" + "{\"type\":\"assi",
        )
        .unwrap();
        let mut reader = TranscriptReader::new(project, "s");
        let ids = |obs: Vec<Observation>| -> Vec<(String, bool)> {
            obs.into_iter()
                .map(|o| (o.message_id, o.subagent))
                .collect()
        };
        assert_eq!(ids(reader.poll()), vec![("m1".into(), false)]);
        // The rest of the half-written line arrives.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&main)
            .unwrap();
        f.write_all(b"stant\",\"message\":{\"id\":\"m2\",\"usage\":{\"input_tokens\":3}}}\n")
            .unwrap();
        assert_eq!(ids(reader.poll()), vec![("m2".into(), false)]);
        // A subagent transcript, and a link that must not be followed.
        let subagents = project.join("s").join("subagents");
        std::fs::create_dir_all(&subagents).unwrap();
        std::fs::write(
            subagents.join("agent-a.jsonl"),
            line("sub1", "claude-opus-5-5", 100, 20) + "\n",
        )
        .unwrap();
        let outside = dir.path().join("outside.jsonl");
        std::fs::write(&outside, line("evil", "claude-opus-5-5", 1, 1) + "\n").unwrap();
        std::os::unix::fs::symlink(&outside, subagents.join("agent-b.jsonl")).unwrap();
        assert_eq!(ids(reader.poll()), vec![("sub1".into(), true)]);
        // Truncation re-reads from the start.
        std::fs::write(&main, line("m3", "claude-opus-5-5", 1, 1) + "\n").unwrap();
        assert_eq!(ids(reader.poll()), vec![("m3".into(), false)]);
    }

    #[test]
    fn an_overlong_line_is_skipped_without_being_held() {
        let mut tail = Tail::new(PathBuf::from("/nonexistent"), false);
        let mut out = Vec::new();
        let chunk = vec![b'x'; 1024 * 1024];
        for _ in 0..(MAX_LINE_BYTES / chunk.len() + 2) {
            tail.feed(&chunk, &mut out);
            assert!(tail.pending.len() <= MAX_LINE_BYTES);
        }
        tail.feed(b"tail of it\n", &mut out);
        tail.feed(
            (line("ok", "claude-opus-5-5", 1, 1) + "\n").as_bytes(),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message_id, "ok");
    }

    fn arb_obs() -> impl Strategy<Value = Observation> {
        (0u8..6, 0u64..2000, 0u64..2000, 0u64..50, any::<bool>()).prop_map(
            |(id, input, output, cache, known)| Observation {
                message_id: format!("m{id}"),
                model: if known { "claude-opus-5-5" } else { "other" }.into(),
                subagent: false,
                tokens: Tokens {
                    input,
                    output,
                    cache_write: cache,
                    cache_read: cache,
                },
            },
        )
    }

    proptest! {
        /// Whatever the order and repetition of lines, the charged tokens per id are the
        /// max of what was seen, and the metered cost never goes down.
        #[test]
        fn charges_sum_to_the_max_per_id(observations in proptest::collection::vec(arb_obs(), 0..60)) {
            let mut meter = Meter::new(opus());
            let mut charged: HashMap<String, Tokens> = HashMap::new();
            let mut max: HashMap<String, Tokens> = HashMap::new();
            let mut last_metered = 0.0;
            for o in &observations {
                let m = max.entry(o.message_id.clone()).or_default();
                *m = m.max(&o.tokens);
                if let Some(c) = meter.observe(o) {
                    prop_assert!(!c.tokens.is_zero());
                    prop_assert!(c.cost_usd >= 0.0);
                    let t = charged.entry(c.message_id.clone()).or_default();
                    t.input += c.tokens.input;
                    t.output += c.tokens.output;
                    t.cache_write += c.tokens.cache_write;
                    t.cache_read += c.tokens.cache_read;
                }
                prop_assert!(meter.metered_usd() >= last_metered);
                last_metered = meter.metered_usd();
            }
            for (id, m) in &max {
                let c = charged.get(id).copied().unwrap_or_default();
                prop_assert_eq!(c, *m);
            }
        }

        /// Arbitrary bytes never panic the parser or the line splitter.
        #[test]
        fn arbitrary_bytes_are_harmless(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut tail = Tail::new(PathBuf::from("/nonexistent"), false);
            let mut out = Vec::new();
            for chunk in &chunks {
                tail.feed(chunk, &mut out);
            }
            let mut meter = Meter::new(opus());
            for o in &out {
                if let Some(c) = meter.observe(o) {
                    prop_assert!(c.cost_usd.is_finite());
                }
            }
        }
    }
}
