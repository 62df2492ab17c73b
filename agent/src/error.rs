//! Errors an RPC can end with, and the one place they become gRPC statuses.
//!
//! Internal errors (journal, tmux, launch) are typed in their own modules; the ones a
//! caller can see are wrapped here. Messages are lowercase fragments; they never contain
//! the session secret (the secret is never put into an error).

use parhelia_contract::codes::{self, ErrorCode};

use crate::journal::JournalError;

/// Why an RPC failed. Each variant's message is what the caller reads.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The call did not carry this session's secret.
    #[error("missing or wrong session secret")]
    Unauthenticated,
    /// The request itself is unacceptable.
    #[error("{0}")]
    InvalidArgument(String),
    /// The session is not in a state that allows the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The agent is shutting down and no longer takes requests.
    #[error("the agent is shutting down")]
    ShuttingDown,
    /// The journal could not record or read an event.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A checkpoint could not be taken; `code` is its row of the error-code table,
    /// sent in the status's metadata (`codes::METADATA_KEY`), never in its message.
    #[error("{message}")]
    Checkpoint { code: ErrorCode, message: String },
}

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> tonic::Status {
        let message = error.to_string();
        match error {
            ServiceError::Unauthenticated => tonic::Status::unauthenticated(message),
            ServiceError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ServiceError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            ServiceError::ShuttingDown => tonic::Status::unavailable(message),
            ServiceError::Journal(_) => tonic::Status::internal(message),
            ServiceError::Checkpoint { code, .. } => {
                let mut status = tonic::Status::aborted(message);
                if let Ok(value) = code.code.parse() {
                    status.metadata_mut().insert(codes::METADATA_KEY, value);
                }
                status
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_code() {
        let cases = [
            (ServiceError::Unauthenticated, tonic::Code::Unauthenticated),
            (
                ServiceError::InvalidArgument("x".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                ServiceError::FailedPrecondition("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (ServiceError::ShuttingDown, tonic::Code::Unavailable),
        ];
        for (error, code) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert!(status.metadata().get(codes::METADATA_KEY).is_none());
        }
    }

    #[test]
    fn a_checkpoint_failures_code_travels_in_the_metadata_not_the_message() {
        let status = tonic::Status::from(ServiceError::Checkpoint {
            code: codes::CHECKPOINT_CORRUPT,
            message: "layer 3 does not verify".into(),
        });
        assert_eq!(status.code(), tonic::Code::Aborted);
        assert_eq!(status.message(), "layer 3 does not verify");
        assert_eq!(status.metadata().get(codes::METADATA_KEY).unwrap(), "E620");
    }
}
