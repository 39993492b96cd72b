//! The integration tests' harness: a real CNCF distribution registry per
//! test, deterministic image fixtures pushed to it, a fake registry for
//! content a real one refuses to serve, servers that hang or proxy, and
//! file-tree helpers. Each module's docs say what it offers, with an
//! example; every item is re-exported here, so a test starts with
//! `use harness::*;`.
//!
//! Everything but [`within`] is synchronous and blocking. Calling it from a
//! `#[tokio::test(flavor = "multi_thread")]` body is fine as long as no
//! library future is in flight on the same task at that moment. Every
//! server listens on 127.0.0.1 (the TLS registry also on this machine's
//! name) and stops when dropped.

pub mod cache;
pub mod ctest;
pub mod fake;
pub mod files;
pub mod fixtures;
pub mod http;
pub mod media;
pub mod mount;
pub mod proxy;
pub mod registry;
pub mod silent;
pub mod tls;
pub mod token;
pub mod tools;
pub mod tree;

pub use cache::*;
pub use ctest::*;
pub use fake::*;
pub use files::*;
pub use fixtures::*;
pub use http::*;
pub use media::*;
pub use mount::*;
pub use proxy::*;
pub use registry::*;
pub use silent::*;
pub use tls::*;
pub use token::*;
pub use tools::*;
pub use tree::*;
