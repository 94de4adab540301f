//! The one error type of push and pull.

use std::path::PathBuf;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The template itself is bad, or the pulled one did not load: the
    /// template crate's own error, with its own exit status.
    #[error(transparent)]
    Template(#[from] vmfork_machine::error::Error),
    /// A valid template that cannot travel through a registry yet.
    #[error("template {path}: {what} not supported yet")]
    Unsupported { path: PathBuf, what: String },
    /// The registry wants credentials, or refused the ones given.
    #[error("registry {registry}: authentication refused ({detail}); give --username with --password-stdin, or VMFORK_REGISTRY_USERNAME and VMFORK_REGISTRY_PASSWORD")]
    Auth { registry: String, detail: String },
    /// The registry could not be reached, or answered with an error.
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    /// What the registry sent is not a vmfork template artifact this
    /// vmfork can use.
    #[error("{reference}: {detail}")]
    Artifact { reference: String, detail: String },
    /// A blob's bytes do not hash to the digest the manifest names.
    #[error("{reference}: {what}: digest mismatch (expected {expected}, got {actual}); the registry's copy is corrupt")]
    Digest {
        reference: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Sorts a client error: an authorization failure apart from the rest,
    /// so that a script can tell "needs credentials" from "not there".
    pub(crate) fn from_client(reference: &Reference, e: OciDistributionError) -> Error {
        let registry = reference.resolve_registry().to_string();
        let detail = one_line(&describe(&e));
        let auth = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
            OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
            // A HEAD (blob_exists) has no body to carry an error envelope.
            OciDistributionError::RequestError(e) => e
                .status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403),
            _ => false,
        };
        if auth {
            Error::Auth { registry, detail }
        } else {
            Error::Registry { registry, detail }
        }
    }
}

/// What went wrong, in the registry's words where it gave some, and with
/// the causes reqwest keeps out of its own message (connection refused,
/// a TLS failure).
fn describe(e: &OciDistributionError) -> String {
    if let OciDistributionError::RegistryError { envelope, url } = e {
        let messages: Vec<&str> = envelope.errors.iter().map(|e| e.message.as_str()).collect();
        return format!("{url}: {}", messages.join("; "));
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Registry messages may span lines (an error envelope's list); the CLI
/// prints one line per failure.
pub(crate) fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(400) {
        Some((at, _)) => format!("{}...", &joined[..at]),
        None => joined,
    }
}
