//! Code generated from `proto/kairos/v1/*.proto` by `build.rs`: prost messages,
//! tonic clients and servers, and pbjson serde impls (the protobuf JSON mapping).
//!
//! Server code converts these types to domain types in `api/` only; the CLI and
//! the peer transport use them as wire types.
//!
//! `google.protobuf.Timestamp` is [`Timestamp`] (hand-written, for its
//! canonical JSON form); the other well-known types are `pbjson_types`'s.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

mod timestamp;

pub use timestamp::Timestamp;

include!(concat!(env!("OUT_DIR"), "/kairos.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/kairos.v1.serde.rs"));
