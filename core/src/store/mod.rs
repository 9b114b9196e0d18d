//! The store behind the in-memory index.

mod sqlite;

pub use sqlite::*;
