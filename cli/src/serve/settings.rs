//! What `runbox serve` runs with: the listen address, the token, limits;
//! read through a lookup so tests pass a map instead of changing the
//! process environment, and checked before anything starts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The variable holding the bearer token.
pub const TOKEN_VAR: &str = "RUNBOX_API_TOKEN";
/// The variable Cloud Run sets to the port to listen on.
pub const PORT_VAR: &str = "PORT";
/// The address without `--http` or `$PORT`.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to listen: `--http`, else `0.0.0.0:$PORT` when `PORT` is set
    /// (Cloud Run), else 127.0.0.1:8080.
    pub addr: SocketAddr,
    /// `RUNBOX_API_TOKEN`: required on every route but `/healthz` when set;
    /// must be set unless `addr` is loopback.
    pub token: Option<String>,
    /// How long requests in flight may take to finish after SIGTERM.
    pub drain: Duration,
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `PORT` is not a port number.
    #[error("PORT={0:?} is not a port number")]
    BadPort(String),
    /// A non-loopback address without a token.
    #[error(
        "refusing to listen on {0} without {TOKEN_VAR}: set a token (clients send \
         `Authorization: Bearer <token>`), or listen on a loopback address"
    )]
    PublicWithoutToken(SocketAddr),
}

impl Settings {
    /// Resolves the address and token from the flags and `env`, and checks
    /// that a public address has a token.
    pub fn resolve(
        http: Option<SocketAddr>,
        drain: Duration,
        max_upload_bytes: u64,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let addr = match (http, env(PORT_VAR).filter(|p| !p.is_empty())) {
            (Some(addr), _) => addr,
            (None, Some(port)) => {
                let port = port.parse().map_err(|_| SettingsError::BadPort(port))?;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
            }
            (None, None) => DEFAULT_ADDR,
        };
        let token = env(TOKEN_VAR).filter(|t| !t.is_empty());
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(SettingsError::PublicWithoutToken(addr));
        }
        Ok(Self {
            addr,
            token,
            drain,
            max_upload_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(http: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::resolve(
            http.map(|a| a.parse().unwrap()),
            Duration::from_secs(1),
            1,
            |k| env.get(k).cloned(),
        )
    }

    #[test]
    fn loopback_needs_no_token() {
        let s = resolve(None, &[]).unwrap();
        assert_eq!(s.addr, DEFAULT_ADDR);
        assert!(s.token.is_none());
        assert!(resolve(Some("[::1]:9000"), &[]).is_ok());
    }

    #[test]
    fn public_addresses_need_a_token() {
        for addr in ["0.0.0.0:8080", "192.0.2.1:80", "[::]:8080"] {
            assert!(matches!(
                resolve(Some(addr), &[]),
                Err(SettingsError::PublicWithoutToken(_))
            ));
            assert!(matches!(
                resolve(Some(addr), &[(TOKEN_VAR, "")]),
                Err(SettingsError::PublicWithoutToken(_))
            ));
            assert!(resolve(Some(addr), &[(TOKEN_VAR, "t")]).is_ok());
        }
    }

    #[test]
    fn port_means_every_interface_and_the_flag_wins() {
        assert!(matches!(
            resolve(None, &[(PORT_VAR, "9090")]),
            Err(SettingsError::PublicWithoutToken(a)) if a.port() == 9090
        ));
        let s = resolve(None, &[(PORT_VAR, "9090"), (TOKEN_VAR, "t")]).unwrap();
        assert_eq!(s.addr, "0.0.0.0:9090".parse().unwrap());
        let s = resolve(Some("127.0.0.1:1"), &[(PORT_VAR, "9090")]).unwrap();
        assert_eq!(s.addr.port(), 1);
        assert!(matches!(
            resolve(None, &[(PORT_VAR, "http")]),
            Err(SettingsError::BadPort(_))
        ));
    }
}
