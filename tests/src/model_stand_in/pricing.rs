//! What Claude Code charges for the usage the stand-in reports, so tests can predict
//! `total_cost_usd` exactly.
//!
//! Claude Code prices each response from its own table, by the model the request named:
//! `input × input price + output × output price + cache writes × write price + cache reads ×
//! read price`, per million tokens, summed over responses. The prices below were measured with
//! Claude Code 2.1.330 by serving one million tokens of each kind (see
//! `docs/dev/claude-code-notes.md`); a newer Claude Code may differ, which
//! the `stand_in_claude` test would show.

use super::script::Usage;

/// US dollars per million tokens of each kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

/// Prices observed per model name, as Claude Code requests it.
pub const OBSERVED_PRICES: &[(&str, Price)] = &[
    // Claude Code 2.1.330's default model when no --model is given.
    (
        "claude-opus-5-5",
        Price {
            input: 4.0,
            output: 20.0,
            cache_write: 5.0,
            cache_read: 0.2,
        },
    ),
    (
        "claude-sonnet-4-6",
        Price {
            input: 3.0,
            output: 15.0,
            cache_write: 3.75,
            cache_read: 0.3,
        },
    ),
    (
        "claude-haiku-4-5",
        Price {
            input: 1.0,
            output: 5.0,
            cache_write: 1.25,
            cache_read: 0.1,
        },
    ),
];

/// The observed price of `model`, if it was measured.
pub fn observed_price(model: &str) -> Option<Price> {
    OBSERVED_PRICES
        .iter()
        .find(|(name, _)| *name == model)
        .map(|(_, price)| *price)
}

impl Price {
    /// The cost Claude Code reports for one response with `usage`.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input
            + usage.output_tokens as f64 * self.output
            + usage.cache_creation_input_tokens as f64 * self.cache_write
            + usage.cache_read_input_tokens as f64 * self.cache_read)
            / 1_000_000.0
    }
}

/// Whether two dollar amounts agree up to floating-point summation noise. Claude Code sums
/// per-response costs in a different order than a test would, so exact equality is too strict.
pub fn same_cost(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_matches_a_captured_run() {
        // tests/fixtures/stream-json/success-write-bash.jsonl: three responses on the default
        // model, 470 input and 55 output tokens in all, reported as 0.00298 USD.
        let price = observed_price("claude-opus-5-5").expect("measured");
        let total = price.cost_usd(&Usage::new(470, 55));
        assert!(same_cost(total, 0.002_980_000_000_000_000_4), "{total}");
        assert!(!same_cost(total, 0.00299));
    }
}
