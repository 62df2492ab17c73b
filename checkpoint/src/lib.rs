//! The checkpoint engine (see docs/formats/checkpoint.md).
