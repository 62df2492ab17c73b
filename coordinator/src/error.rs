//! The user-facing error type: a code from [`crate::error_codes`] plus a
//! message, and its mapping to and from gRPC statuses.
//!
//! Errors inside the library that a user can act on are [`CodedError`]s;
//! anything else is an internal error (`anyhow`) and reaches the user as
//! exit status 1. The CLI turns errors into text and exit statuses in one
//! place (`cli::report_error`); this module is the one place that maps them
//! onto gRPC.

use crate::error_codes::{self, ErrorCode};

/// gRPC metadata entry that carries the Parhelia error code of a failed call.
pub const ERROR_CODE_METADATA_KEY: &str = parhelia_contract::codes::METADATA_KEY;

/// An error with a stable code. `message` is a lowercase fragment such as
/// `task not found: task-1a2b3c4d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: ErrorCode,
    pub message: String,
    /// Advice chosen for this error's cause ([`error_codes::advice`]),
    /// printed instead of the code's general `recover` text. (Boxed: a
    /// `Result<_, CodedError>` stays small.)
    pub advice: Option<Box<str>>,
}

impl CodedError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            advice: None,
        }
    }

    /// The same error with advice for its cause.
    pub fn with_advice(mut self, advice: Option<String>) -> Self {
        self.advice = advice.map(String::into_boxed_str);
        self
    }

    /// The hint printed under the error: the advice for its cause, else
    /// the code's general one.
    pub fn hint(&self) -> String {
        match &self.advice {
            Some(advice) => format!("{advice} (more: parhelia help {})", self.code.code),
            None => self.code.hint(),
        }
    }

    /// The gRPC status for this error, with the code in the metadata.
    pub fn to_status(&self) -> tonic::Status {
        let grpc_code = match self.code.code.as_bytes().get(1) {
            Some(b'1') => tonic::Code::InvalidArgument,
            Some(b'2') => tonic::Code::NotFound,
            Some(b'3') => tonic::Code::ResourceExhausted,
            Some(b'4') => tonic::Code::Unauthenticated,
            Some(b'5') => tonic::Code::Unavailable,
            Some(b'6') => tonic::Code::FailedPrecondition,
            _ => tonic::Code::Internal,
        };
        let mut status = tonic::Status::new(grpc_code, self.message.clone());
        if let Ok(value) = self.code.code.parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA_KEY, value);
        }
        status
    }

    /// Recovers a coded error from a status produced by [`Self::to_status`].
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA_KEY)?
            .to_str()
            .ok()?;
        let code = error_codes::lookup(code)?;
        Some(Self::new(*code, status.message()))
    }
}

impl From<CodedError> for tonic::Status {
    fn from(err: CodedError) -> Self {
        err.to_status()
    }
}

/// Shorthand for the many places that build a coded error.
pub fn coded(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    CodedError::new(code, message).into()
}

/// The coded error inside an `anyhow` chain, if any.
pub fn find_coded(err: &anyhow::Error) -> Option<&CodedError> {
    err.chain().find_map(|e| e.downcast_ref::<CodedError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coded_error_survives_a_grpc_status() {
        let err = CodedError::new(error_codes::TASK_NOT_FOUND, "task not found: task-0");
        let status = err.to_status();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(CodedError::from_status(&status), Some(err));
        assert_eq!(CodedError::from_status(&tonic::Status::internal("x")), None);
    }
}
