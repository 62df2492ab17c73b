//! The rate table: every price the ledger charges by, as versioned data
//! with a source line per figure (`coordinator/rates/<version>.toml`,
//! embedded at build time). Config `[rates]` keys override single figures
//! (`config::rate_overrides` names them, for `budget show`); config seeds its
//! defaults from this table, and this module imports nothing of config. Pure: no IO.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// USD per million tokens of each kind, for one model: the type `spec.json`'s
/// `model_prices` carries to the agent.
pub use parhelia_contract::spec::ModelPrice;

/// The table in force: its file's text.
const EMBEDDED: &str = include_str!("../rates/2026-12.toml");

/// Seconds in the month storage is priced by (30 days).
pub const STORAGE_MONTH_SECONDS: f64 = 30.0 * 86_400.0;

/// One price and where it came from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    pub usd: f64,
    pub source: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComputeRates {
    pub cpu_core_usd_per_second: Figure,
    pub memory_gib_usd_per_second: Figure,
    /// By GPU type as Modal names it.
    pub gpu_usd_per_second: BTreeMap<String, Figure>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageRates {
    /// A Modal volume, per GiB held for a month ([`STORAGE_MONTH_SECONDS`]).
    pub volume_gib_usd_per_month: Figure,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelRates {
    pub input_usd_per_mtok: Figure,
    pub output_usd_per_mtok: Figure,
    pub cache_write_usd_per_mtok: Figure,
    pub cache_read_usd_per_mtok: Figure,
}

impl ModelRates {
    pub fn price(&self) -> ModelPrice {
        ModelPrice {
            input_usd_per_mtok: self.input_usd_per_mtok.usd,
            output_usd_per_mtok: self.output_usd_per_mtok.usd,
            cache_write_usd_per_mtok: self.cache_write_usd_per_mtok.usd,
            cache_read_usd_per_mtok: self.cache_read_usd_per_mtok.usd,
        }
    }

    fn figures(&self) -> [(&'static str, &Figure); 4] {
        [
            ("input_usd_per_mtok", &self.input_usd_per_mtok),
            ("output_usd_per_mtok", &self.output_usd_per_mtok),
            ("cache_write_usd_per_mtok", &self.cache_write_usd_per_mtok),
            ("cache_read_usd_per_mtok", &self.cache_read_usd_per_mtok),
        ]
    }
}

/// A rate table as its file holds it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateTable {
    pub version: String,
    pub compute: ComputeRates,
    pub storage: StorageRates,
    /// By the model name Claude Code requests.
    pub models: BTreeMap<String, ModelRates>,
}

impl RateTable {
    /// Parses and checks a table: every figure finite, ≥ 0, with a source;
    /// a version; at least one GPU type and one model.
    pub fn parse(text: &str) -> Result<RateTable, String> {
        let table: RateTable = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if table.version.trim().is_empty() {
            return Err("the table has no version".into());
        }
        if table.compute.gpu_usd_per_second.is_empty() {
            return Err("the table prices no GPU type".into());
        }
        if table.models.is_empty() {
            return Err("the table prices no model".into());
        }
        for (key, figure) in table.figures() {
            if !figure.usd.is_finite() || figure.usd < 0.0 {
                return Err(format!("{key}: {} is not a price (≥ 0)", figure.usd));
            }
            if figure.source.trim().is_empty() {
                return Err(format!("{key} has no source"));
            }
        }
        Ok(table)
    }

    /// Every figure with its dotted name (`rates.` keys for those config
    /// can override: `rates.cpu_core_usd_per_second`,
    /// `rates.gpu_a100_usd_per_second`, `rates.storage_gib_usd_per_month`,
    /// `rates.models."claude-opus-5-5".input_usd_per_mtok`).
    pub fn figures(&self) -> Vec<(String, &Figure)> {
        let mut out = vec![
            (
                "rates.cpu_core_usd_per_second".to_string(),
                &self.compute.cpu_core_usd_per_second,
            ),
            (
                "rates.memory_gib_usd_per_second".to_string(),
                &self.compute.memory_gib_usd_per_second,
            ),
        ];
        for (gpu, figure) in &self.compute.gpu_usd_per_second {
            out.push((gpu_key(gpu), figure));
        }
        out.push((
            STORAGE_KEY.to_string(),
            &self.storage.volume_gib_usd_per_month,
        ));
        for (model, rates) in &self.models {
            for (name, figure) in rates.figures() {
                out.push((format!("rates.models.\"{model}\".{name}"), figure));
            }
        }
        out
    }

    /// Model prices in the shape `[rates.models]` has.
    pub fn model_prices(&self) -> BTreeMap<String, ModelPrice> {
        self.models
            .iter()
            .map(|(name, m)| (name.clone(), m.price()))
            .collect()
    }
}

/// The config key of the storage price.
pub const STORAGE_KEY: &str = "rates.storage_gib_usd_per_month";

/// The config key of a GPU type's price: `A100-80GB` → `rates.gpu_a100_80gb_usd_per_second`.
pub fn gpu_key(gpu: &str) -> String {
    format!(
        "rates.gpu_{}_usd_per_second",
        gpu.to_ascii_lowercase().replace('-', "_")
    )
}

/// The table this build carries (checked by the tests below, so parsing
/// it cannot fail in a released build).
pub fn embedded() -> &'static RateTable {
    static TABLE: OnceLock<RateTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        RateTable::parse(EMBEDDED).unwrap_or_else(|e| panic!("the embedded rate table: {e}"))
    })
}

/// The storage charge for holding `bytes` for `seconds` at `usd_per_gib_month`
/// (0 for anything not positive or not finite).
pub fn storage_charge_usd(bytes: u64, seconds: f64, usd_per_gib_month: f64) -> f64 {
    if seconds.is_nan()
        || seconds <= 0.0
        || !usd_per_gib_month.is_finite()
        || usd_per_gib_month <= 0.0
    {
        return 0.0;
    }
    let gib = bytes as f64 / (1024.0 * 1024.0 * 1024.0);
    let charge = gib * seconds / STORAGE_MONTH_SECONDS * usd_per_gib_month;
    if charge.is_finite() { charge } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_embedded_table_parses_and_every_figure_has_a_source() {
        let table = RateTable::parse(EMBEDDED).expect("the embedded table parses");
        assert_eq!(table.version, "2026-12");
        let figures = table.figures();
        // 2 compute + 10 GPUs + 1 storage + 3 models × 4.
        assert_eq!(figures.len(), 2 + 10 + 1 + 12, "{figures:#?}");
        for (key, figure) in figures {
            assert!(figure.usd.is_finite() && figure.usd >= 0.0, "{key}");
            assert!(figure.source.trim().len() > 10, "{key} has no real source");
        }
    }

    #[test]
    fn model_prices_are_the_measured_ones() {
        let prices = embedded().model_prices();
        let opus = &prices["claude-opus-5-5"];
        assert_eq!(
            (
                opus.input_usd_per_mtok,
                opus.output_usd_per_mtok,
                opus.cache_write_usd_per_mtok,
                opus.cache_read_usd_per_mtok
            ),
            (4.0, 20.0, 5.0, 0.2)
        );
        assert_eq!(prices["claude-sonnet-4-6"].cache_write_usd_per_mtok, 3.75);
        assert_eq!(prices["claude-haiku-4-5"].output_usd_per_mtok, 5.0);
    }

    const SMALL: &str = r#"
version = "t"
[compute]
cpu_core_usd_per_second = { usd = 1.0, source = "CPU_SOURCE" }
memory_gib_usd_per_second = { usd = 1.0, source = "m" }
[compute.gpu_usd_per_second]
T4 = { usd = 1.0, source = "g" }
[storage]
volume_gib_usd_per_month = { usd = 0.2, source = "s" }
[models.m]
input_usd_per_mtok = { usd = 1.0, source = "i" }
output_usd_per_mtok = { usd = 1.0, source = "o" }
cache_write_usd_per_mtok = { usd = 1.0, source = "w" }
cache_read_usd_per_mtok = { usd = 1.0, source = "r" }
"#;

    #[test]
    fn a_figure_without_a_source_or_a_price_is_refused() {
        assert!(RateTable::parse(SMALL).is_ok());
        let no_source = SMALL.replace("CPU_SOURCE", "  ");
        assert!(
            RateTable::parse(&no_source)
                .unwrap_err()
                .contains("cpu_core_usd_per_second has no source")
        );
        let missing = SMALL.replace(", source = \"CPU_SOURCE\"", "");
        assert!(RateTable::parse(&missing).is_err());
        let negative = SMALL.replace("usd = 1.0, source = \"CPU", "usd = -1.0, source = \"CPU");
        assert!(
            RateTable::parse(&negative)
                .unwrap_err()
                .contains("cpu_core")
        );
        let nan = SMALL.replace("usd = 1.0, source = \"CPU", "usd = nan, source = \"CPU");
        assert!(RateTable::parse(&nan).is_err());
        let unknown = SMALL.replace("[storage]", "[storage]\ncolour = 1");
        assert!(RateTable::parse(&unknown).is_err());
        let no_version = SMALL.replace("version = \"t\"", "version = \" \"");
        assert!(RateTable::parse(&no_version).is_err());
    }

    #[test]
    fn storage_arithmetic() {
        let gib = 1u64 << 30;
        let month = STORAGE_MONTH_SECONDS;
        assert!((storage_charge_usd(gib, month, 0.20) - 0.20).abs() < 1e-12);
        assert_eq!(storage_charge_usd(gib, 0.0, 0.20), 0.0);
        assert_eq!(storage_charge_usd(gib, -5.0, 0.20), 0.0);
        assert_eq!(storage_charge_usd(gib, f64::NAN, 0.20), 0.0);
        assert_eq!(storage_charge_usd(gib, month, 0.0), 0.0);
    }

    proptest! {
        /// Charging each interval at the size measured at its start sums to
        /// Σ bytes × rate × duration, and no charge is negative.
        #[test]
        fn storage_charges_over_time_sum_to_bytes_times_rate_times_duration(
            steps in proptest::collection::vec((0u64..(1u64 << 40), 0u64..(90 * 86_400_000)), 1..40),
            rate in 0.0f64..10.0,
        ) {
            let mut total = 0.0;
            let mut expected_gib_seconds = 0.0;
            for (bytes, ms) in &steps {
                let seconds = *ms as f64 / 1000.0;
                let charge = storage_charge_usd(*bytes, seconds, rate);
                prop_assert!(charge >= 0.0 && charge.is_finite());
                total += charge;
                expected_gib_seconds += *bytes as f64 / (1u64 << 30) as f64 * seconds;
            }
            let expected = expected_gib_seconds / STORAGE_MONTH_SECONDS * rate;
            prop_assert!((total - expected).abs() <= 1e-9 * expected.max(1.0));
        }
    }
}
