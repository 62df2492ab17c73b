//! Contracts shared by the agent, the coordinator and the checkpoint crate that are
//! not gRPC wire types (those are `parhelia-proto`'s). Plain data and no IO, so the
//! checkpoint crate can use it without the gRPC stack; its dependencies are serde and
//! serde_json, for the files the two sides exchange (`spec.json`, checkpoint metadata).

pub mod checkpoint;
pub mod codes;
pub mod sim;
pub mod spec;
