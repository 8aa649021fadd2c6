//! Who is calling: the operator on the Unix socket, or a tenant named by
//! its bearer token on TCP. Tokens are kept as SHA-256 digests only.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota};
use sha2::{Digest, Sha256};

use crate::config::TenantConfig;

/// The actor of requests on the Unix socket.
pub const OPERATOR: &str = "local";

/// A caller, as the handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant's name, or [`OPERATOR`].
    pub name: Arc<str>,
    /// Whether it may call the operator endpoints and see every lease.
    pub admin: bool,
    /// Whether it is the operator on the Unix socket (who sees every lease
    /// and leases as no tenant).
    pub operator: bool,
}

impl Caller {
    /// The operator on the Unix socket.
    #[must_use]
    pub fn operator() -> Self {
        Self {
            name: OPERATOR.into(),
            admin: true,
            operator: true,
        }
    }

    /// Whether it may see and use a lease of `tenant`.
    #[must_use]
    pub fn owns(&self, tenant: Option<&str>) -> bool {
        self.operator || tenant == Some(&*self.name)
    }

    /// The tenant its leases are acquired for (none for the operator).
    #[must_use]
    pub fn tenant(&self) -> Option<&str> {
        (!self.operator).then_some(&*self.name)
    }
}

/// A tenant as the daemon keeps it.
#[derive(Debug)]
struct Tenant {
    caller: Caller,
    requests: Option<DefaultDirectRateLimiter>,
}

/// The tenants, by token digest.
#[derive(Debug, Default)]
pub struct Tenants {
    by_digest: HashMap<[u8; 32], Tenant>,
}

/// Why a TCP request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header, or a token no tenant has.
    Unauthorized,
    /// The tenant is past its request rate; retry after this long.
    RateLimited(std::time::Duration),
}

impl Tenants {
    /// The tenants of a configuration (whose digests are checked).
    #[must_use]
    pub fn new(configs: &[TenantConfig]) -> Self {
        let by_digest = configs
            .iter()
            .filter_map(|config| {
                let digest = parse_digest(&config.token_sha256)?;
                let requests = config
                    .requests_per_second
                    .and_then(NonZeroU32::new)
                    .map(|n| DefaultDirectRateLimiter::direct(Quota::per_second(n)));
                let caller = Caller {
                    name: config.name.as_str().into(),
                    admin: config.admin,
                    operator: false,
                };
                Some((digest, Tenant { caller, requests }))
            })
            .collect();
        Self { by_digest }
    }

    /// The tenant whose token is in `authorization` (the header's value),
    /// once its request rate lets this request through.
    ///
    /// # Errors
    /// [`AuthError`].
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let tenant = self.by_digest.get(&digest).ok_or(AuthError::Unauthorized)?;
        if let Some(limiter) = &tenant.requests {
            limiter.check().map_err(|until| {
                AuthError::RateLimited(until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                )))
            })?;
        }
        Ok(tenant.caller.clone())
    }
}

/// The 32 bytes of a 64-hex-digit SHA-256, or `None`.
#[must_use]
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hex SHA-256 of `token`: what `token_sha256` holds.
#[must_use]
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, token: &str, rate: Option<u32>) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            token_sha256: token_digest(token),
            admin: false,
            requests_per_second: rate,
        }
    }

    #[test]
    fn tokens_name_their_tenant_and_nothing_else_passes() {
        let tenants = Tenants::new(&[tenant("acme", "s3cret", None), tenant("zed", "other", None)]);
        let acme = tenants.authenticate(Some("Bearer s3cret")).expect("acme");
        assert_eq!(&*acme.name, "acme");
        assert!(!acme.admin && !acme.operator);
        assert!(acme.owns(Some("acme")) && !acme.owns(Some("zed")) && !acme.owns(None));
        for bad in [
            None,
            Some("s3cret"),
            Some("Bearer "),
            Some("Bearer wrong"),
            Some("Basic s3cret"),
        ] {
            assert_eq!(
                tenants.authenticate(bad),
                Err(AuthError::Unauthorized),
                "{bad:?}"
            );
        }
        assert!(Caller::operator().owns(Some("zed")) && Caller::operator().owns(None));
    }

    #[test]
    fn a_tenant_past_its_request_rate_is_told_when_to_retry() {
        let tenants = Tenants::new(&[tenant("acme", "t", Some(1))]);
        assert!(tenants.authenticate(Some("Bearer t")).is_ok());
        match tenants.authenticate(Some("Bearer t")) {
            Err(AuthError::RateLimited(wait)) => {
                assert!(
                    wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digests_are_64_hex_digits() {
        assert_eq!(
            token_digest("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(parse_digest(&token_digest("x")).is_some());
        assert!(parse_digest("zz").is_none());
        assert!(parse_digest(&"g".repeat(64)).is_none());
    }
}
