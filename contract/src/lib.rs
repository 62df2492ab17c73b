//! Contracts shared by the agent, the coordinator and the checkpoint crate that are
//! not gRPC wire types (those are `parhelia-proto`'s). Plain data, no IO and no
//! dependencies, so the checkpoint crate can use it without the gRPC stack.

pub mod codes;
