//! The claim checks of an ID token (OpenID Connect Core 1.0, 3.1.3.7) and of a logout token
//! (OpenID Connect Back-Channel Logout 1.0, 2.6), after the signature verified.

use aalgate_policy::Timestamp;
use serde_json::{Map, Value};

use crate::jwt::{self, JwkSet, JwtError};

/// How far the provider's clock may be from this gateway's.
pub const LEEWAY_SECS: u64 = 30;
/// A logout token older than this is refused (its `jti` is remembered this long).
pub const LOGOUT_TOKEN_MAX_AGE_SECS: u64 = 300;
/// The event a logout token carries.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a token was refused: the signature, or one claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The JWS itself.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A claim is missing or wrong; the text names it.
    #[error("{0}")]
    Claim(String),
}

fn claim(msg: impl Into<String>) -> TokenError {
    TokenError::Claim(msg.into())
}

fn str_claim<'a>(c: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    c.get(name).and_then(Value::as_str)
}

fn time_claim(c: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match c.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| claim(format!("{name} is not a time"))),
    }
}

fn check_issuer_audience(
    c: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
) -> Result<(), TokenError> {
    if str_claim(c, "iss") != Some(issuer) {
        return Err(claim(format!(
            "iss {:?} is not the configured issuer {issuer:?}",
            str_claim(c, "iss").unwrap_or("")
        )));
    }
    let aud: Vec<&str> = match c.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Err(claim("aud is missing")),
    };
    if !aud.contains(&client_id) {
        return Err(claim("aud does not name this client"));
    }
    // Another audience is a party this gateway does not trust with the same token.
    if aud.iter().any(|a| *a != client_id) {
        return Err(claim("aud names other clients too"));
    }
    if let Some(azp) = c.get("azp") {
        if azp.as_str() != Some(client_id) {
            return Err(claim("azp is not this client"));
        }
    }
    Ok(())
}

/// What an ID token must match.
#[derive(Debug, Clone)]
pub struct IdTokenCheck<'a> {
    /// The configured issuer, compared exactly.
    pub issuer: &'a str,
    /// This gateway's client id.
    pub client_id: &'a str,
    /// The nonce sent with the authorization request.
    pub nonce: &'a str,
    /// Now, on this gateway's clock.
    pub now: Timestamp,
    /// `max_age` sent with the request: the login must be at most this old (so `auth_time`
    /// is required).
    pub max_age: Option<u64>,
}

/// What a verified ID token says of the person and the login.
#[derive(Debug, Clone, PartialEq)]
pub struct IdClaims {
    /// The provider's stable id of the person.
    pub sub: String,
    /// When the person last logged in at the provider.
    pub auth_time: Option<u64>,
    /// Authentication methods (RFC 8176).
    pub amr: Vec<String>,
    /// Authentication context class.
    pub acr: Option<String>,
    /// The provider's session id (for back-channel logout).
    pub sid: Option<String>,
    /// Every claim, for the configured username, e-mail and groups claims.
    pub all: Map<String, Value>,
}

/// Verifies an ID token's signature and claims.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    check: &IdTokenCheck<'_>,
) -> Result<IdClaims, TokenError> {
    let c = jwt::decode(token)?.verify(keys)?;
    check_issuer_audience(&c, check.issuer, check.client_id)?;
    let now = check.now.0;
    let exp = time_claim(&c, "exp")?.ok_or_else(|| claim("exp is missing"))?;
    if exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(claim("the token expired"));
    }
    let iat = time_claim(&c, "iat")?.ok_or_else(|| claim("iat is missing"))?;
    if iat > now.saturating_add(LEEWAY_SECS) {
        return Err(claim("iat is in the future"));
    }
    match str_claim(&c, "nonce") {
        Some(n) if !check.nonce.is_empty() && constant_eq(n, check.nonce) => {}
        Some(_) => return Err(claim("nonce does not match this sign-in")),
        None => return Err(claim("nonce is missing")),
    }
    let auth_time = time_claim(&c, "auth_time")?;
    if let Some(max_age) = check.max_age {
        let Some(at) = auth_time else {
            return Err(claim("auth_time is missing, and max_age was sent"));
        };
        if at > now.saturating_add(LEEWAY_SECS) {
            return Err(claim("auth_time is in the future"));
        }
        if now.saturating_sub(at) > max_age.saturating_add(LEEWAY_SECS) {
            return Err(claim("the provider login is older than max_age"));
        }
    }
    let sub = str_claim(&c, "sub")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| claim("sub is missing"))?
        .to_string();
    let amr = match c.get("amr") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(_) => return Err(claim("amr is not an array")),
    };
    Ok(IdClaims {
        sub,
        auth_time,
        amr,
        acr: str_claim(&c, "acr").map(String::from),
        sid: str_claim(&c, "sid").map(String::from),
        all: c,
    })
}

/// What a verified logout token ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutClaims {
    /// The person, if named.
    pub sub: Option<String>,
    /// The provider session, if named.
    pub sid: Option<String>,
    /// The token's id: a second token with it is a replay.
    pub jti: String,
    /// When it was issued.
    pub iat: u64,
}

/// Verifies a logout token's signature and claims. The caller checks `jti` was never seen.
pub fn verify_logout_token(
    token: &str,
    keys: &JwkSet,
    issuer: &str,
    client_id: &str,
    now: Timestamp,
) -> Result<LogoutClaims, TokenError> {
    let unverified = jwt::decode(token)?;
    if let Some(t) = unverified.header.typ.as_deref() {
        if !t.eq_ignore_ascii_case("logout+jwt") && !t.eq_ignore_ascii_case("jwt") {
            return Err(claim(format!("typ {t:?} is not a logout token")));
        }
    }
    let c = unverified.verify(keys)?;
    check_issuer_audience(&c, issuer, client_id)?;
    let now = now.0;
    let iat = time_claim(&c, "iat")?.ok_or_else(|| claim("iat is missing"))?;
    if iat > now.saturating_add(LEEWAY_SECS) {
        return Err(claim("iat is in the future"));
    }
    if now.saturating_sub(iat) > LOGOUT_TOKEN_MAX_AGE_SECS {
        return Err(claim("the logout token is too old"));
    }
    if let Some(exp) = time_claim(&c, "exp")? {
        if exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(claim("the token expired"));
        }
    }
    let jti = str_claim(&c, "jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| claim("jti is missing"))?
        .to_string();
    match c
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
    {
        Some(Value::Object(_)) => {}
        _ => return Err(claim("events has no back-channel logout event")),
    }
    // A nonce marks an ID token: one must never be taken for a logout token.
    if c.contains_key("nonce") {
        return Err(claim("a logout token has no nonce"));
    }
    let sub = str_claim(&c, "sub")
        .filter(|s| !s.is_empty())
        .map(String::from);
    let sid = str_claim(&c, "sid")
        .filter(|s| !s.is_empty())
        .map(String::from);
    if sub.is_none() && sid.is_none() {
        return Err(claim("neither sub nor sid"));
    }
    Ok(LogoutClaims { sub, sid, jti, iat })
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
