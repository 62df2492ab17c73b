//! Identifier and secret generation, and small time helpers.
//!
//! Ids are a kind prefix plus 8 random lowercase hex characters
//! (`task-1a2b3c4d`, `sess-…`, `ctr-…`); Claude Code session ids are UUID v4.
//! Secrets are 256 random bits, hex encoded, and are wrapped in
//! [`SessionSecret`] whose `Debug` never shows the value.

use rand::Rng;

pub const TASK_PREFIX: &str = "task-";
pub const SESSION_PREFIX: &str = "sess-";
pub const CONTAINER_PREFIX: &str = "ctr-";
pub const COORDINATOR_PREFIX: &str = "coord-";

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new id with the given prefix and 8 hex characters.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(4))
}

pub fn new_task_id() -> String {
    new_id(TASK_PREFIX)
}

pub fn new_session_id() -> String {
    new_id(SESSION_PREFIX)
}

pub fn new_container_id() -> String {
    new_id(CONTAINER_PREFIX)
}

pub fn new_coordinator_id() -> String {
    new_id(COORDINATOR_PREFIX)
}

/// The id Claude Code gets as `--session-id`.
pub fn new_claude_session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// True when `id` is `prefix` plus exactly 8 lowercase hex characters.
pub fn is_well_formed(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 8
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A session's secret: authorizes every agent RPC. Never printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecret(String);

impl SessionSecret {
    pub fn generate() -> Self {
        Self(random_hex(32))
    }

    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the agent's environment and the auth header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret(<redacted>)")
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 (UTC, millisecond precision) for a Unix millisecond timestamp.
pub fn rfc3339_ms(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    ts.format(&format).unwrap_or_else(|_| ms.to_string())
}

/// The inverse of [`rfc3339_ms`] (any RFC 3339 time).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_eight_hex_chars() {
        for (prefix, id) in [
            (TASK_PREFIX, new_task_id()),
            (SESSION_PREFIX, new_session_id()),
            (CONTAINER_PREFIX, new_container_id()),
        ] {
            assert!(is_well_formed(prefix, &id), "{id}");
        }
        assert_ne!(new_task_id(), new_task_id());
        assert!(!is_well_formed(TASK_PREFIX, "task-XYZ12345"));
        assert!(!is_well_formed(TASK_PREFIX, "task-1234"));
    }

    #[test]
    fn claude_session_id_is_uuid_v4() {
        let id = uuid::Uuid::parse_str(&new_claude_session_id()).unwrap();
        assert_eq!(id.get_version_num(), 4);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = SessionSecret::generate();
        assert_eq!(secret.expose().len(), 64);
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }

    #[test]
    fn rfc3339_formats_utc_millis() {
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
