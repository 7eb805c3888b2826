//! The identity providers at run time: each one's discovery document and signing keys,
//! fetched and cached, and the calls to its token endpoint. The checks themselves are
//! `aalgate_oidc`'s (pure); this is the I/O around them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_oidc::{IdClaims, IdTokenCheck, JwkSet, LogoutClaims, Metadata, Provider, TokenError};
use aalgate_policy::Timestamp;
use anyhow::{Context, Result};
use base64::Engine as _;

use crate::http::client::fetch;

/// How long a discovery document is used before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The key set is read again on a token signed with an unknown key, at most this often: a
/// flood of made-up key ids cannot make the gateway hammer the provider.
pub const KEYS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Largest discovery document, key set or token response read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Deadline of one call to the provider.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Why a provider step did not give a verified person.
#[derive(Debug)]
pub enum FedError {
    /// The provider could not be reached or answered nonsense: try again later.
    Unavailable(String),
    /// The provider refused, or what it sent does not verify.
    Refused(String),
}

impl std::fmt::Display for FedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FedError::Unavailable(m) => write!(f, "provider unavailable: {m}"),
            FedError::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

#[derive(Default)]
struct Keys {
    set: Arc<JwkSet>,
    fetched: Option<Instant>,
}

/// One configured provider with its caches.
pub struct Idp {
    /// The validated config.
    pub cfg: Provider,
    secret: String,
    metadata: tokio::sync::Mutex<Option<(Arc<Metadata>, Instant)>>,
    keys: tokio::sync::Mutex<Keys>,
    /// Key set fetches, for the tests of the refetch limit.
    pub key_fetches: std::sync::atomic::AtomicU64,
}

/// Every configured provider.
#[derive(Default)]
pub struct Federation {
    /// In config order (the sign-in page's buttons).
    pub idps: Vec<Arc<Idp>>,
}

impl Federation {
    /// Reads each provider's client secret.
    pub fn load(providers: &[Provider]) -> Result<Federation> {
        let mut idps = Vec::new();
        for p in providers {
            let secret = std::fs::read_to_string(&p.client_secret_file)
                .with_context(|| {
                    format!(
                        "identity provider {}: client_secret_file {}",
                        p.id,
                        p.client_secret_file.display()
                    )
                })?
                .trim()
                .to_string();
            if secret.is_empty() {
                anyhow::bail!(
                    "identity provider {}: client_secret_file {} is empty",
                    p.id,
                    p.client_secret_file.display()
                );
            }
            idps.push(Arc::new(Idp {
                cfg: p.clone(),
                secret,
                metadata: Default::default(),
                keys: Default::default(),
                key_fetches: Default::default(),
            }));
        }
        Ok(Federation { idps })
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Idp>> {
        self.idps.iter().find(|i| i.cfg.id == id)
    }
}

fn unavailable(e: impl std::fmt::Display) -> FedError {
    FedError::Unavailable(e.to_string())
}

impl Idp {
    /// The discovery document, read at most hourly; a stale one is used while the provider
    /// is unreachable.
    pub async fn metadata(&self) -> Result<Arc<Metadata>, FedError> {
        let mut m = self.metadata.lock().await;
        if let Some((doc, at)) = m.as_ref() {
            if at.elapsed() < METADATA_TTL {
                return Ok(doc.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let read = async {
            let got = fetch(
                "GET",
                &url,
                &[("accept", "application/json".into())],
                None,
                MAX_DOCUMENT,
                CALL_DEADLINE,
            )
            .await
            .map_err(unavailable)?;
            if got.status != 200 {
                return Err(unavailable(format!("{url} answered {}", got.status)));
            }
            Metadata::parse(&got.body, &self.cfg.issuer).map_err(FedError::Unavailable)
        };
        match read.await {
            Ok(doc) => {
                let doc = Arc::new(doc);
                *m = Some((doc.clone(), Instant::now()));
                Ok(doc)
            }
            Err(e) => match m.as_ref() {
                Some((doc, _)) => {
                    tracing::warn!(idp = %self.cfg.id, error = %e, "using the cached discovery document");
                    Ok(doc.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The key set; with `unknown` (a token named a key not in it) read again, at most once
    /// per [`KEYS_REFETCH_INTERVAL`].
    async fn key_set(&self, unknown: bool) -> Result<Arc<JwkSet>, FedError> {
        let mut k = self.keys.lock().await;
        let due = match k.fetched {
            None => true,
            Some(at) => unknown && at.elapsed() >= KEYS_REFETCH_INTERVAL,
        };
        if !due {
            return Ok(k.set.clone());
        }
        // Counted as an attempt even if it fails: a provider that is down is not asked on
        // every request either.
        k.fetched = Some(Instant::now());
        self.key_fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let meta = self.metadata().await?;
        let got = fetch(
            "GET",
            &meta.jwks_uri,
            &[("accept", "application/json".into())],
            None,
            MAX_DOCUMENT,
            CALL_DEADLINE,
        )
        .await
        .map_err(unavailable)?;
        if got.status != 200 {
            return Err(unavailable(format!("jwks_uri answered {}", got.status)));
        }
        let set = JwkSet::parse(&got.body).map_err(FedError::Unavailable)?;
        k.set = Arc::new(set);
        Ok(k.set.clone())
    }

    /// Runs `verify` with the cached keys, and once more with a fresh set when the token
    /// names a key the cache does not have.
    async fn with_keys<T>(
        &self,
        verify: impl Fn(&JwkSet) -> Result<T, TokenError>,
    ) -> Result<T, FedError> {
        let keys = self.key_set(false).await?;
        match verify(&keys) {
            Err(TokenError::Jwt(aalgate_oidc::JwtError::UnknownKey(kid))) => {
                let fresh = self.key_set(true).await?;
                if Arc::ptr_eq(&fresh, &keys) {
                    return Err(FedError::Refused(format!(
                        "no key {kid:?} in the provider's key set (read again less than {}s ago)",
                        KEYS_REFETCH_INTERVAL.as_secs()
                    )));
                }
                verify(&fresh).map_err(|e| FedError::Refused(e.to_string()))
            }
            r => r.map_err(|e| FedError::Refused(e.to_string())),
        }
    }

    /// Verifies an ID token.
    pub async fn verify_id_token(
        &self,
        token: &str,
        nonce: &str,
        now: Timestamp,
        max_age: Option<u64>,
    ) -> Result<IdClaims, FedError> {
        let check = IdTokenCheck {
            issuer: &self.cfg.issuer,
            client_id: &self.cfg.client_id,
            nonce,
            now,
            max_age,
        };
        self.with_keys(|k| aalgate_oidc::verify_id_token(token, k, &check))
            .await
    }

    /// Verifies a back-channel logout token (the caller checks its `jti` was never seen).
    pub async fn verify_logout_token(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<LogoutClaims, FedError> {
        self.with_keys(|k| {
            aalgate_oidc::verify_logout_token(token, k, &self.cfg.issuer, &self.cfg.client_id, now)
        })
        .await
    }

    /// Where the browser goes to log in.
    pub fn authorize_url(
        &self,
        meta: &Metadata,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
        fresh: bool,
        max_age: Option<u64>,
    ) -> Result<String, FedError> {
        let mut url = url::Url::parse(&meta.authorization_endpoint).map_err(unavailable)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &self.cfg.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("nonce", nonce)
                .append_pair("code_challenge", &aalgate_oidc::pkce::challenge(verifier))
                .append_pair("code_challenge_method", "S256");
            if fresh {
                q.append_pair("prompt", "login");
            }
            if let Some(m) = max_age {
                q.append_pair("max_age", &m.to_string());
            }
        }
        Ok(url.into())
    }

    /// Exchanges an authorization code for the ID token (`client_secret_basic`).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, FedError> {
        let meta = self.metadata().await?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", verifier)
            .finish();
        // RFC 6749 2.3.1: both parts form-encoded before the basic credentials.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&self.cfg.client_id),
            enc(&self.secret)
        ));
        let got = fetch(
            "POST",
            &meta.token_endpoint,
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("accept", "application/json".into()),
                ("authorization", format!("Basic {basic}")),
            ],
            Some(body.into_bytes()),
            MAX_DOCUMENT,
            CALL_DEADLINE,
        )
        .await
        .map_err(unavailable)?;
        let json: serde_json::Value = serde_json::from_slice(&got.body).map_err(|_| {
            unavailable(format!(
                "token endpoint answered {} without JSON",
                got.status
            ))
        })?;
        if got.status != 200 {
            let err = json.get("error").and_then(|e| e.as_str()).unwrap_or("?");
            // A used or unknown code is the browser's problem, not the provider's.
            return Err(if got.status == 400 {
                FedError::Refused(format!("token endpoint: {err}"))
            } else {
                unavailable(format!("token endpoint answered {}: {err}", got.status))
            });
        }
        json.get("id_token")
            .and_then(|t| t.as_str())
            .map(String::from)
            .ok_or_else(|| FedError::Refused("the token response has no id_token".into()))
    }
}
