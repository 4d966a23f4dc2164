//! A lean HTTP/2 transport for gRPC (RFC 9113, HPACK RFC 7541), written for the engine's
//! hot path: one task per connection reads every frame a read returns, runs the calls
//! they complete, and writes all the answers with one write.
//!
//! - [`server`]: serves a connection with any tower service taking `http::Request`s — the
//!   same tonic services and layers the engine registers — including streaming calls.
//! - [`client`]: unary calls over one connection, for the load harness.

pub mod client;
pub mod frame;
pub mod grpc;
pub mod hpack;
pub mod server;
