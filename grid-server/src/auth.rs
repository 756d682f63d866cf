//! Bearer-token authentication: JWT verification with an explicitly configured algorithm,
//! issuer, audience and leeway; roles (viewer < operator < admin) and tenants; token minting.

use crate::config::{AuthConfig, Config, JwtAlgorithm};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a token allows, in increasing order: each role can do everything the ones below can.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only access.
    Viewer,
    /// Viewer, plus schedules, commands, optimisation, price uploads.
    Operator,
    /// Operator, plus registering and decommissioning devices, sites and feeders.
    Admin,
}

impl Role {
    /// The role's name as it appears in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The claims of a grid-server token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was minted for.
    pub sub: String,
    /// What it may do.
    pub role: Role,
    /// The tenant whose objects it may see; absent = every tenant (fleet-wide tooling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Issuer (must equal `auth.issuer`).
    pub iss: String,
    /// Audience (must equal `auth.audience`).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: String,
    /// Its role.
    pub role: Role,
    /// Its tenant; `None` = fleet-wide.
    pub tenant: Option<String>,
}

impl Principal {
    /// Whether the caller has at least `role`.
    pub fn has(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether the caller may see an object owned by `tenant` (`None` = unowned).
    pub fn can_access(&self, tenant: Option<&str>) -> bool {
        match (&self.tenant, tenant) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        }
    }
}

/// Why a token or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The request has no `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is malformed, forged, expired, for another audience or issuer, or uses another
    /// algorithm (including `none`).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key material could not be loaded or generated.
    #[error("JWT key: {0}")]
    Key(String),
    /// Minting was refused (no private key, bad TTL).
    #[error("cannot mint token: {0}")]
    Mint(String),
}

/// Verifies (and, when it has the private half, mints) tokens.
#[derive(Clone)]
pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An HS256 authenticator over a shared secret with `auth`'s issuer, audience and leeway.
    pub fn hs256(auth: &AuthConfig, secret: &[u8]) -> Self {
        Self::build(
            auth,
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
        )
    }

    fn build(
        auth: &AuthConfig,
        algorithm: Algorithm,
        decoding: DecodingKey,
        encoding: Option<EncodingKey>,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        // Only the configured algorithm: `none` and algorithm-confusion tokens fail here.
        validation.algorithms = vec![algorithm];
        validation.set_issuer(&[&auth.issuer]);
        validation.set_audience(&[&auth.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = auth.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            algorithm,
            decoding,
            encoding,
            validation,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            default_ttl: Duration::from_secs(auth.default_ttl_s),
            max_ttl: Duration::from_secs(auth.max_ttl_s),
        }
    }

    /// Loads the key material `config` names: `auth.secret` (HS256), the PEM files (RS256 /
    /// EdDSA), or the HS256 key file, generated on first use ([`Config::generated_key_path`]).
    pub fn from_config(config: &Config) -> Result<Self, AuthError> {
        let auth = &config.auth;
        match auth.algorithm {
            JwtAlgorithm::HS256 => {
                if let Some(secret) = &auth.secret {
                    return Ok(Self::hs256(auth, secret.as_bytes()));
                }
                let path = config.generated_key_path().ok_or_else(|| {
                    AuthError::Key(
                        "no HS256 secret: set GRID_JWT_SECRET or auth.key_file \
                         (a key is only generated beside a SQLite database)"
                            .into(),
                    )
                })?;
                let key = load_or_generate_key(&path)?;
                Ok(Self::hs256(auth, &key))
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::EdDSA => {
                let public = auth.public_key_file.as_deref().ok_or_else(|| {
                    AuthError::Key("auth.public_key_file is required for RS256/EdDSA".into())
                })?;
                let pem = read_key(public)?;
                let rs = auth.algorithm == JwtAlgorithm::RS256;
                let decoding = if rs {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ed_pem(&pem)
                }
                .map_err(|e| AuthError::Key(format!("{}: {e}", public.display())))?;
                let encoding = match &auth.private_key_file {
                    Some(p) => {
                        let pem = read_key(p)?;
                        Some(
                            if rs {
                                EncodingKey::from_rsa_pem(&pem)
                            } else {
                                EncodingKey::from_ed_pem(&pem)
                            }
                            .map_err(|e| AuthError::Key(format!("{}: {e}", p.display())))?,
                        )
                    }
                    None => None,
                };
                let alg = if rs {
                    Algorithm::RS256
                } else {
                    Algorithm::EdDSA
                };
                Ok(Self::build(auth, alg, decoding, encoding))
            }
        }
    }

    /// Verifies a bearer token (without the `Bearer ` prefix).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        Ok(Principal {
            subject: c.sub,
            role: c.role,
            tenant: c.tenant,
        })
    }

    /// Mints a token for `subject` with `role`, optionally confined to `tenant`, valid for `ttl`
    /// (the configured default when `None`, at most the configured maximum).
    pub fn mint(
        &self,
        subject: &str,
        role: Role,
        tenant: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<String, AuthError> {
        let encoding = self.encoding.as_ref().ok_or_else(|| {
            AuthError::Mint("no private key configured (auth.private_key_file)".into())
        })?;
        let ttl = ttl.unwrap_or(self.default_ttl);
        if ttl.is_zero() || ttl > self.max_ttl {
            return Err(AuthError::Mint(format!(
                "ttl {}s outside (0, {}s]",
                ttl.as_secs(),
                self.max_ttl.as_secs()
            )));
        }
        let now = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            tenant: tenant.map(str::to_owned),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + ttl.as_secs(),
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .map_err(|e| AuthError::Mint(e.to_string()))
    }

    /// Signs arbitrary claims with this authenticator's key (tests build expired or
    /// wrong-audience tokens with it).
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, AuthError> {
        let encoding = self
            .encoding
            .as_ref()
            .ok_or_else(|| AuthError::Mint("no private key configured".into()))?;
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, encoding)
            .map_err(|e| AuthError::Mint(e.to_string()))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Key(format!("cannot read {}: {e}", path.display())))
}

/// Reads the base64 HS256 key at `path`, or generates 32 random bytes and writes them there
/// (mode 0600 on Unix) when the file does not exist.
pub fn load_or_generate_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| AuthError::Key(format!("{}: not base64: {e}", path.display())))?;
            if key.len() < 32 {
                return Err(AuthError::Key(format!(
                    "{}: key shorter than 32 bytes",
                    path.display()
                )));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| AuthError::Key(e.to_string()))?;
            write_private(
                path,
                &base64::engine::general_purpose::STANDARD.encode(&key),
            )?;
            Ok(key)
        }
        Err(e) => Err(AuthError::Key(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), AuthError> {
    use std::io::Write as _;
    let err = |e: std::io::Error| AuthError::Key(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.write_all(b"\n").map_err(err)
}

/// Parses a token lifetime such as `30m`, `12h`, `7d`, `90s` or `1h 30m`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text
        .parse()
        .or_else(|_| {
            // jiff's friendly format has no `d` unit for signed durations: accept `Nd` too.
            text.strip_suffix('d')
                .and_then(|n| n.trim().parse::<i64>().ok())
                .map(|n| jiff::SignedDuration::from_hours(n.saturating_mul(24)))
                .ok_or(())
        })
        .map_err(|()| format!("{text:?} is not a duration (e.g. 30m, 12h, 7d)"))?;
    if d.is_negative() || d.is_zero() {
        return Err(format!("{text:?} must be positive"));
    }
    d.try_into()
        .map_err(|_| format!("{text:?} is out of range"))
}

/// The default path of the generated key for a configuration, for messages and docs.
pub fn describe_key_source(config: &Config) -> String {
    match (&config.auth.secret, config.auth.algorithm) {
        (Some(_), JwtAlgorithm::HS256) => "GRID_JWT_SECRET".into(),
        (None, JwtAlgorithm::HS256) => config
            .generated_key_path()
            .map(|p: PathBuf| format!("key file {}", p.display()))
            .unwrap_or_else(|| "none".into()),
        (_, alg) => format!("{alg:?} key files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::hs256(&Config::default().auth, b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn minted_tokens_verify_and_carry_role_and_tenant() {
        let a = auth();
        let t = a.mint("alice", Role::Operator, Some("acme"), None).unwrap();
        let p = a.verify(&t).unwrap();
        assert_eq!(p.role, Role::Operator);
        assert_eq!(p.tenant.as_deref(), Some("acme"));
        assert!(p.has(Role::Viewer) && !p.has(Role::Admin));
        assert!(p.can_access(Some("acme")) && !p.can_access(Some("other")));
    }

    #[test]
    fn foreign_keys_wrong_audience_and_expired_tokens_fail() {
        let a = auth();
        let other = Authenticator::hs256(&Config::default().auth, &[7u8; 32]);
        let forged = other.mint("x", Role::Admin, None, None).unwrap();
        assert!(a.verify(&forged).is_err());
        let now = unix_now();
        let mut c = Claims {
            sub: "x".into(),
            role: Role::Admin,
            tenant: None,
            iss: "grid-server".into(),
            aud: "someone-else".into(),
            exp: now + 600,
            iat: now,
        };
        assert!(a.verify(&a.sign_claims(&c).unwrap()).is_err());
        c.aud = "grid-api".into();
        assert!(a.verify(&a.sign_claims(&c).unwrap()).is_ok());
        c.exp = now - 3600;
        assert!(a.verify(&a.sign_claims(&c).unwrap()).is_err());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_ttl("-5m").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn generated_keys_persist() {
        let dir = std::env::temp_dir().join(format!("grid-key-{}", std::process::id()));
        let path = dir.join("k.jwt-key");
        let _ = std::fs::remove_file(&path);
        let k1 = load_or_generate_key(&path).unwrap();
        let k2 = load_or_generate_key(&path).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(k1.len(), 32);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
