//! Shared test support: the corpus world (`tests/corpus/world.toml`) loaded
//! into an [`EntityStore`], and parsers for the corpus' principal/resource
//! notation.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// The crate's root (holds `schema.cedarschema` and `policies/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir() -> PathBuf {
    crate_dir().join("tests").join("corpus")
}

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use allmende_policies::{World, parse_principal, parse_resource};

/// Loads a world or fails the test.
pub fn load_world(path: &Path) -> World {
    World::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The corpus world.
pub fn munich() -> World {
    load_world(&corpus_dir().join("world.toml"))
}
