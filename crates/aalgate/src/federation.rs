//! The identity providers at run time: each one's discovery document and signing keys,
//! fetched and cached, and the calls to its token endpoint. The checks themselves are
//! `aalgate_oidc`'s (pure); this is the I/O around them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aalgate_oidc::provider::ClientAuth;
use aalgate_oidc::{IdClaims, IdTokenCheck, JwkSet, LogoutClaims, Metadata, Provider, TokenError};
use aalgate_policy::Timestamp;
use anyhow::{Context, Result};
use base64::Engine as _;

use crate::client::fetch;

/// How long a discovery document is used before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The key set is read again on a token signed with an unknown key, at most this often: a
/// flood of made-up key ids cannot make the gateway hammer the provider.
pub const KEYS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// The key set is read again after this long anyway.
pub const KEYS_TTL: Duration = Duration::from_secs(3600);
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

/// One authorization request: what binds the provider's answer to this sign-in.
pub struct AuthRequest<'a> {
    /// `public_origin` + the callback path.
    pub redirect_uri: &'a str,
    /// Names the flow and carries a secret.
    pub state: &'a str,
    /// Echoed in the ID token.
    pub nonce: &'a str,
    /// The PKCE verifier (its S256 challenge is sent).
    pub verifier: &'a str,
    /// `prompt=login`: the person logs in now.
    pub fresh: bool,
    /// `max_age`.
    pub max_age: Option<u64>,
}

/// A token request's body and headers.
type TokenRequest = (String, Vec<(&'static str, String)>);

/// What proves the gateway is the client.
enum Secret {
    /// `client_secret_basic`.
    Shared(String),
    /// `private_key_jwt`, with the key's id at the provider.
    Key(Box<aalgate_oidc::client_auth::ClientKey>, Option<String>),
}

/// One configured provider with its caches.
pub struct Idp {
    /// The validated config.
    pub cfg: Provider,
    secret: Secret,
    metadata: tokio::sync::Mutex<Option<(Arc<Metadata>, Instant)>>,
    keys: tokio::sync::Mutex<Keys>,
    /// Key set fetches, for the tests of the refetch limit.
    pub key_fetches: std::sync::atomic::AtomicU64,
    /// [`KEYS_REFETCH_INTERVAL`], shorter in tests.
    refetch_interval: Duration,
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
            let secret = match &p.client_auth {
                ClientAuth::SecretFile(f) => {
                    let secret = std::fs::read_to_string(f)
                        .with_context(|| {
                            format!(
                                "identity provider {}: client_secret_file {}",
                                p.id,
                                f.display()
                            )
                        })?
                        .trim()
                        .to_string();
                    if secret.is_empty() {
                        anyhow::bail!(
                            "identity provider {}: client_secret_file {} is empty",
                            p.id,
                            f.display()
                        );
                    }
                    Secret::Shared(secret)
                }
                ClientAuth::PrivateKeyJwt { key_file, kid } => {
                    use rustls_pki_types::pem::PemObject as _;
                    let what = || {
                        format!(
                            "identity provider {}: private_key_jwt.key_file {}",
                            p.id,
                            key_file.display()
                        )
                    };
                    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_file(key_file)
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .with_context(|| format!("{}: not a PKCS#8 PEM private key (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 writes one)", what()))?;
                    let key =
                        aalgate_oidc::client_auth::ClientKey::from_pkcs8(der.secret_pkcs8_der())
                            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
                    Secret::Key(Box::new(key), kid.clone())
                }
            };
            idps.push(Arc::new(Idp {
                cfg: p.clone(),
                secret,
                metadata: Default::default(),
                keys: Default::default(),
                key_fetches: Default::default(),
                refetch_interval: KEYS_REFETCH_INTERVAL,
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

/// A provider document (discovery, keys): 200 and at most [`MAX_DOCUMENT`] bytes.
async fn get_json(url: &str) -> Result<Vec<u8>, FedError> {
    let got = fetch(
        "GET",
        url,
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
    Ok(got.body)
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
            let body = get_json(&url).await?;
            Metadata::parse(&body, &self.cfg.issuer).map_err(FedError::Unavailable)
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
        // Also read again once the set is an hour old: a key the provider withdrew (rotated
        // out, or compromised) stops verifying within the hour.
        let due = match k.fetched {
            None => true,
            Some(at) => {
                (unknown && at.elapsed() >= self.refetch_interval) || at.elapsed() >= KEYS_TTL
            }
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
        let set = JwkSet::parse(&get_json(&meta.jwks_uri).await?).map_err(FedError::Unavailable)?;
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
            // A key the set does not have, or a token without a key id whose one candidate
            // does not verify it (the provider may have rotated to a new key).
            Err(TokenError::Jwt(
                aalgate_oidc::JwtError::UnknownKey(kid)
                | aalgate_oidc::JwtError::Signature(kid @ None),
            )) => {
                let fresh = self.key_set(true).await?;
                if Arc::ptr_eq(&fresh, &keys) {
                    return Err(FedError::Refused(format!(
                        "no key {kid:?} in the provider's key set (read again less than {:?} ago)",
                        self.refetch_interval
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
        req: &AuthRequest<'_>,
    ) -> Result<String, FedError> {
        let mut url = url::Url::parse(&meta.authorization_endpoint).map_err(unavailable)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", req.redirect_uri)
                .append_pair("scope", &self.cfg.scopes.join(" "))
                .append_pair("state", req.state)
                .append_pair("nonce", req.nonce)
                .append_pair(
                    "code_challenge",
                    &aalgate_oidc::pkce::challenge(req.verifier),
                )
                .append_pair("code_challenge_method", "S256");
            if req.fresh {
                q.append_pair("prompt", "login");
            }
            if let Some(m) = req.max_age {
                q.append_pair("max_age", &m.to_string());
            }
        }
        Ok(url.into())
    }

    /// The token request's body and headers, with this client's authentication.
    fn token_request(
        &self,
        meta: &Metadata,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenRequest, FedError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", verifier);
        let mut headers = vec![
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept", "application/json".to_string()),
        ];
        match &self.secret {
            Secret::Shared(secret) => {
                // RFC 6749 2.3.1: both parts form-encoded before the basic credentials.
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    enc(&self.cfg.client_id),
                    enc(secret)
                ));
                headers.push(("authorization", format!("Basic {basic}")));
            }
            Secret::Key(key, kid) => {
                let assertion = key
                    .assertion(
                        &self.cfg.client_id,
                        &meta.token_endpoint,
                        Timestamp::wall().0,
                        &aalgate_oidc::pkce::random(),
                        kid.as_deref(),
                    )
                    .map_err(unavailable)?;
                form.append_pair("client_id", &self.cfg.client_id)
                    .append_pair(
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    )
                    .append_pair("client_assertion", &assertion);
            }
        }
        let body = form.finish();
        Ok((body, headers))
    }

    /// Exchanges an authorization code for the ID token (`client_secret_basic`).
    pub async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<String, FedError> {
        let meta = self.metadata().await?;
        let (body, headers) = self.token_request(&meta, code, verifier, redirect_uri)?;
        let got = fetch(
            "POST",
            &meta.token_endpoint,
            &headers,
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    fn key() -> Ed25519KeyPair {
        let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap()
    }

    fn jwk(kid: &str, k: &Ed25519KeyPair) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.public_key().as_ref())})
    }

    fn logout_token(iss: &str, kid: &str, k: &Ed25519KeyPair, now: u64) -> String {
        let mut h = serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "logout+jwt"});
        if kid.is_empty() {
            h.as_object_mut().unwrap().remove("kid");
        }
        let c = serde_json::json!({"iss": iss, "aud": "aalgate", "iat": now, "jti": format!("{kid}-{now}"), "sub": "alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(c.to_string().as_bytes())
        );
        let sig = k.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.as_ref()))
    }

    /// A provider on loopback serving discovery and a key set the test swaps (a rotation).
    async fn provider(keys: std::sync::Arc<Mutex<serde_json::Value>>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let iss = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let issuer = iss.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let keys = keys.clone();
                let iss = issuer.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let body = if head.starts_with("GET /.well-known/openid-configuration") {
                        serde_json::json!({"issuer": iss, "authorization_endpoint": format!("{iss}/auth"),
                            "token_endpoint": format!("{iss}/token"), "jwks_uri": format!("{iss}/jwks")}).to_string()
                    } else {
                        keys.lock().unwrap().to_string()
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
        iss
    }

    /// A token signed with a key the cache does not have makes the gateway read the key set
    /// again (the provider rotated its keys), but at most once per interval: a flood of
    /// made-up key ids costs the provider nothing more.
    #[tokio::test]
    async fn an_unknown_key_is_fetched_again_once_per_interval() {
        let (k1, k2) = (key(), key());
        let keys = std::sync::Arc::new(Mutex::new(serde_json::json!({"keys": [jwk("k1", &k1)]})));
        let iss = provider(keys.clone()).await;
        let raw: aalgate_oidc::RawProvider = serde_json::from_value(serde_json::json!({
            "id": "mercy", "display_name": "Mercy", "issuer": iss, "client_id": "aalgate",
            "client_secret_file": "unused"}))
        .unwrap();
        let idp = Idp {
            cfg: raw.validate().unwrap(),
            secret: Secret::Shared("s".into()),
            metadata: Default::default(),
            keys: Default::default(),
            key_fetches: Default::default(),
            refetch_interval: Duration::from_millis(400),
        };
        let now = Timestamp::wall();
        let fetches = |idp: &Idp| idp.key_fetches.load(Ordering::Relaxed);
        idp.verify_logout_token(&logout_token(&iss, "k1", &k1, now.0), now)
            .await
            .unwrap();
        assert_eq!(fetches(&idp), 1);
        // The provider rotates to k2; within the interval a k2 token is refused unfetched.
        *keys.lock().unwrap() = serde_json::json!({"keys": [jwk("k2", &k2)]});
        let t2 = logout_token(&iss, "k2", &k2, now.0);
        assert!(matches!(
            idp.verify_logout_token(&t2, now).await,
            Err(FedError::Refused(_))
        ));
        assert_eq!(fetches(&idp), 1);
        tokio::time::sleep(Duration::from_millis(450)).await;
        idp.verify_logout_token(&t2, now).await.unwrap();
        assert_eq!(fetches(&idp), 2, "one refetch for the new key");
        // A flood of made-up key ids: no more fetches within the interval.
        for i in 0..50 {
            let t = logout_token(&iss, &format!("made-up-{i}"), &k1, now.0);
            assert!(matches!(
                idp.verify_logout_token(&t, now).await,
                Err(FedError::Refused(_))
            ));
        }
        assert_eq!(fetches(&idp), 2, "made-up key ids are rate-limited");
        tokio::time::sleep(Duration::from_millis(450)).await;
        let t = logout_token(&iss, "made-up-again", &k1, now.0);
        assert!(idp.verify_logout_token(&t, now).await.is_err());
        assert_eq!(fetches(&idp), 3, "again once the interval passed");
        // A rotation seen by a token without a key id: its one candidate key does not verify
        // it, so the set is read again (within the same limit).
        let k3 = key();
        *keys.lock().unwrap() = serde_json::json!({"keys": [jwk("k3", &k3)]});
        tokio::time::sleep(Duration::from_millis(450)).await;
        let t3 = logout_token(&iss, "", &k3, now.0 + 1);
        idp.verify_logout_token(&t3, now).await.unwrap();
        assert_eq!(fetches(&idp), 4, "a token without a kid after a rotation");
    }
}
