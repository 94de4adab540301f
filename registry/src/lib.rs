//! Templates as OCI artifacts: `vmfork template push` stores a template
//! directory in an OCI registry under vmfork's own media types, and
//! `vmfork template pull` brings one back as a checked template directory
//! (docs/registry.md).
#![deny(unsafe_op_in_unsafe_fn)]

mod artifact;
mod blob;
mod client;
mod error;
mod pull;
mod push;

pub use artifact::{
    ArtifactConfig, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, MEMORY_MEDIA_TYPE,
    STATE_MEDIA_TYPE,
};
pub use client::{Credentials, Options};
pub use error::{Error, Result};
pub use oci_client::Reference;
pub use pull::{pull, PullReport};
pub use push::{push, PushReport};
