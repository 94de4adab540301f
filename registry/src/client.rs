//! An oci-client for one reference: protocol, credentials, runtime.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// Registry credentials for HTTP basic auth.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

// Never print the password, even in a debug dump of the options.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub credentials: Option<Credentials>,
    /// Plain HTTP to any registry; a loopback one always gets plain HTTP.
    pub plain_http: bool,
}

/// A loopback registry (a test's, or a local cache) has no certificate
/// to offer: talk plain HTTP to it, and HTTPS to everything else.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn client_for(reference: &Reference, opts: &Options) -> (Client, RegistryAuth) {
    let registry = reference.resolve_registry().to_string();
    let protocol = if opts.plain_http {
        ClientProtocol::Http
    } else if is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        // A template is one artifact; index selection never applies.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let auth = match &opts.credentials {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    };
    (Client::new(config), auth)
}

/// One command's worth of async work on a runtime of its own: the CLI is
/// synchronous, and a push or pull is one conversation at a time.
pub(crate) fn block_on<F: std::future::Future>(
    future: F,
) -> std::result::Result<F::Output, std::io::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for (registry, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.1.2.3", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("registry.example.com", false),
            ("10.0.0.1:5000", false),
            ("[2001:db8::1]:443", false),
        ] {
            assert_eq!(is_loopback(registry), loopback, "{registry}");
        }
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
