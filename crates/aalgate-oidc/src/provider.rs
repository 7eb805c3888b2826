//! An identity provider as `aalgate.yaml` configures it (`identity_providers:`), validated, and
//! what its tokens map to: the person's directory id, e-mail, groups and the AAL.

use std::path::PathBuf;

use aalgate_policy::Aal;
use serde::Deserialize;
use serde_json::{Map, Value};

/// One entry of `identity_providers:` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Short id, in URLs and the audit log (`mercy-sso`).
    pub id: String,
    /// The button text: "Sign in with <display_name>".
    pub display_name: String,
    /// The issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// This gateway's client id at the provider.
    pub client_id: String,
    /// A file holding the client secret (`client_secret_basic`).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Or the gateway's own key (`private_key_jwt`): no shared secret.
    #[serde(default)]
    pub private_key_jwt: Option<RawPrivateKeyJwt>,
    /// Scopes asked for; `openid` is always sent.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Which claims name the person.
    #[serde(default)]
    pub claims: Option<RawClaims>,
    /// What a login at the provider counts as.
    #[serde(default)]
    pub aal: Option<RawAalMapping>,
    /// Creating unknown people on first sign-in (off unless set).
    #[serde(default)]
    pub jit: Option<RawJit>,
    /// Whether aalgate's logout also ends the provider's session (RP-initiated logout).
    #[serde(default)]
    pub end_provider_session: bool,
    /// Whether a plain sign-in may ride the provider's existing session without asking the
    /// person to log in again (off: for shared workstations).
    #[serde(default)]
    pub silent_login: bool,
    /// Whether a person signed in through this provider at aal2 or more may enroll a passkey
    /// for aalgate's step-ups without an IT invite (never a hardware key for AAL3).
    #[serde(default)]
    pub enroll_after_sso: bool,
}

/// `private_key_jwt:` of a provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivateKeyJwt {
    /// A PKCS#8 PEM private key (P-256, RSA or Ed25519) whose public key the provider has.
    pub key_file: PathBuf,
    /// The key's id at the provider, sent as `kid`.
    #[serde(default)]
    pub kid: Option<String>,
}

/// How the gateway proves it is the client at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`, the secret read from this file.
    SecretFile(PathBuf),
    /// `private_key_jwt`, signed with the key in this file.
    PrivateKeyJwt {
        /// The key file.
        key_file: PathBuf,
        /// The key's id at the provider.
        kid: Option<String>,
    },
}

/// `claims:` of a provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    /// The claim matched to the directory's user id (default `preferred_username`).
    #[serde(default)]
    pub username: Option<String>,
    /// The e-mail claim (default `email`).
    #[serde(default)]
    pub email: Option<String>,
    /// The groups claim (default `groups`).
    #[serde(default)]
    pub groups: Option<String>,
}

/// `aal:` of a provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAalMapping {
    /// The level of a login no rule matches (default `aal1`).
    #[serde(default)]
    pub default: Option<Aal>,
    /// The first matching rule gives the level.
    #[serde(default)]
    pub rules: Vec<RawAalRule>,
}

/// One mapping rule: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAalRule {
    /// Any of these `amr` values.
    #[serde(default)]
    pub amr_any: Option<Vec<String>>,
    /// The `acr` is one of these.
    #[serde(default)]
    pub acr_any: Option<Vec<String>>,
    /// The level it gives (at most `aal2`).
    pub aal: Aal,
}

/// `jit:` of a provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJit {
    /// Members of any of these provider groups are created on first sign-in.
    pub groups_any: Vec<String>,
}

/// A validated mapping rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AalRule {
    /// Any of these `amr` values (empty: no condition).
    pub amr_any: Vec<String>,
    /// One of these `acr` values (empty: no condition).
    pub acr_any: Vec<String>,
    /// The level.
    pub aal: Aal,
}

/// What a provider's login counts as: honest by default (AAL1), never AAL3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AalMapping {
    /// No rule matched.
    pub default: Aal,
    /// In order.
    pub rules: Vec<AalRule>,
}

impl AalMapping {
    /// The level of a login with these `amr` and `acr`.
    pub fn level(&self, amr: &[String], acr: Option<&str>) -> Aal {
        self.rules
            .iter()
            .find(|r| {
                (r.amr_any.is_empty() || r.amr_any.iter().any(|a| amr.contains(a)))
                    && (r.acr_any.is_empty()
                        || acr.is_some_and(|c| r.acr_any.iter().any(|x| x == c)))
            })
            .map_or(self.default, |r| r.aal)
    }

    /// The best level any login can reach.
    pub fn best(&self) -> Aal {
        self.rules
            .iter()
            .map(|r| r.aal)
            .chain([self.default])
            .max()
            .unwrap_or(Aal::Aal1)
    }
}

/// A validated identity provider.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Short id.
    pub id: String,
    /// Button text.
    pub display_name: String,
    /// Issuer, without a trailing slash unless the provider's own has one (compared exactly
    /// with discovery and every token).
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// How the gateway authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// Scopes, `openid` first.
    pub scopes: Vec<String>,
    /// Username claim.
    pub username_claim: String,
    /// E-mail claim.
    pub email_claim: String,
    /// Groups claim.
    pub groups_claim: String,
    /// The AAL mapping.
    pub aal: AalMapping,
    /// Provider groups whose members are created on first sign-in (empty: nobody).
    pub jit_groups: Vec<String>,
    /// RP-initiated logout at aalgate's logout.
    pub end_provider_session: bool,
    /// A plain first sign-in may be silent at the provider (never a switch, a re-auth, a
    /// step-up or a flow that keeps a form).
    pub silent_login: bool,
    /// Passkey enrollment without an invite after a sign-in here at aal2 or more.
    pub enroll_after_sso: bool,
}

fn claim_name(v: Option<String>, default: &str, what: &str) -> Result<String, String> {
    let v = v.unwrap_or_else(|| default.to_string());
    if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
        return Err(format!("claims.{what} {v:?} is not a claim name"));
    }
    Ok(v)
}

impl RawProvider {
    /// Validates one entry; errors name the field and the fix.
    pub fn validate(self) -> Result<Provider, String> {
        let id = self.id;
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "id {id:?}: use 1-32 lowercase letters, digits and '-', e.g. mercy-sso"
            ));
        }
        let at = |m: String| format!("identity provider {id}: {m}");
        if self.display_name.trim().is_empty() || self.display_name.len() > 80 {
            return Err(at("display_name: give the name people know it by (at most 80 characters), e.g. Mercy Health SSO".into()));
        }
        let issuer = self.issuer.trim().to_string();
        let parsed = url::Url::parse(&issuer)
            .map_err(|e| at(format!("issuer {issuer:?} is not a URL: {e}")))?;
        let local = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if parsed.scheme() != "https" && !(parsed.scheme() == "http" && local) {
            return Err(at(format!(
                "issuer {issuer:?} must be https:// (plain http only on localhost, for tests)"
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(at(format!("issuer {issuer:?} has a query or fragment")));
        }
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            return Err(at("client_id is empty".into()));
        }
        let mut scopes = vec!["openid".to_string()];
        for s in self
            .scopes
            .unwrap_or_else(|| vec!["profile".into(), "email".into()])
        {
            if s.is_empty() || s.bytes().any(|b| b <= b' ' || b == b'"' || b == b'\\') {
                return Err(at(format!("scopes: {s:?} is not a scope")));
            }
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let client_auth = match (self.client_secret_file, self.private_key_jwt) {
            (Some(f), None) => ClientAuth::SecretFile(f),
            (None, Some(k)) => ClientAuth::PrivateKeyJwt {
                key_file: k.key_file,
                kid: k.kid,
            },
            _ => {
                return Err(at(
                    "give exactly one of client_secret_file and private_key_jwt: { key_file }"
                        .into(),
                ))
            }
        };
        let claims = self.claims.unwrap_or(RawClaims {
            username: None,
            email: None,
            groups: None,
        });
        let mut aal = AalMapping {
            default: Aal::Aal1,
            rules: Vec::new(),
        };
        if let Some(m) = self.aal {
            aal.default = m.default.unwrap_or(Aal::Aal1);
            for (i, r) in m.rules.into_iter().enumerate() {
                let amr_any = r.amr_any.unwrap_or_default();
                let acr_any = r.acr_any.unwrap_or_default();
                if amr_any.is_empty() && acr_any.is_empty() {
                    return Err(at(format!(
                        "aal.rules[{i}] has no condition: give amr_any or acr_any (or set aal.default)"
                    )));
                }
                aal.rules.push(AalRule {
                    amr_any,
                    acr_any,
                    aal: r.aal,
                });
            }
        }
        if aal.best() == Aal::Aal3 {
            return Err(at("aal: a provider's login never counts as aal3; AAL3 needs aalgate's own attested hardware key (map it to aal2 at most, and routes that need aal3 ask for the key)".into()));
        }
        let jit_groups = match self.jit {
            None => Vec::new(),
            Some(j) if j.groups_any.is_empty() => {
                return Err(at("jit.groups_any is empty: name the provider groups whose members may be created on first sign-in, or remove jit".into()))
            }
            Some(j) => j.groups_any,
        };
        Ok(Provider {
            display_name: self.display_name.trim().to_string(),
            issuer,
            client_id: self.client_id,
            client_auth,
            scopes,
            username_claim: claim_name(claims.username, "preferred_username", "username")
                .map_err(at)?,
            email_claim: claim_name(claims.email, "email", "email").map_err(at)?,
            groups_claim: claim_name(claims.groups, "groups", "groups").map_err(at)?,
            aal,
            jit_groups,
            end_provider_session: self.end_provider_session,
            silent_login: self.silent_login,
            enroll_after_sso: self.enroll_after_sso,
            id,
        })
    }
}

/// The groups a token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    /// The claim is absent: the provider says nothing of groups.
    Absent,
    /// The provider could not fit them in the token (Entra's `_claim_names`): keep what the
    /// person had.
    Overage,
    /// These groups, as written (not yet checked as group names).
    Listed(Vec<String>),
}

impl Provider {
    /// The username claim's value.
    pub fn username<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a str> {
        claims.get(&self.username_claim).and_then(Value::as_str)
    }

    /// The e-mail claim's value, only if the provider says it verified it (`email_verified`):
    /// apps may identify people by it.
    pub fn email<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a str> {
        if claims.get("email_verified").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        claims.get(&self.email_claim).and_then(Value::as_str)
    }

    /// The groups claim.
    pub fn groups(&self, claims: &Map<String, Value>) -> Groups {
        let overage = claims
            .get("_claim_names")
            .and_then(Value::as_object)
            .is_some_and(|n| n.contains_key(&self.groups_claim));
        match claims.get(&self.groups_claim) {
            _ if overage => Groups::Overage,
            None => Groups::Absent,
            Some(Value::Array(a)) => Groups::Listed(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
            ),
            Some(Value::String(s)) => Groups::Listed(vec![s.clone()]),
            Some(_) => Groups::Absent,
        }
    }
}

/// The provider metadata aalgate uses (OpenID Connect Discovery 1.0).
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the browser goes.
    pub authorization_endpoint: String,
    /// Where the code is exchanged.
    pub token_endpoint: String,
    /// The signing keys.
    pub jwks_uri: String,
    /// RP-initiated logout.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// PKCE methods.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
}

impl Metadata {
    /// Parses and checks a discovery document for `issuer`.
    pub fn parse(body: &[u8], issuer: &str) -> Result<Metadata, String> {
        let m: Metadata = serde_json::from_slice(body)
            .map_err(|e| format!("the discovery document is not valid: {e}"))?;
        if m.issuer != issuer {
            return Err(format!(
                "the discovery document's issuer {:?} is not the configured {issuer:?}",
                m.issuer
            ));
        }
        for (name, u) in [
            ("authorization_endpoint", Some(&m.authorization_endpoint)),
            ("token_endpoint", Some(&m.token_endpoint)),
            ("jwks_uri", Some(&m.jwks_uri)),
            ("end_session_endpoint", m.end_session_endpoint.as_ref()),
        ] {
            let Some(u) = u else { continue };
            let p = url::Url::parse(u).map_err(|e| format!("{name} {u:?}: {e}"))?;
            let local = matches!(p.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if p.scheme() != "https" && !(p.scheme() == "http" && local) {
                return Err(format!("{name} {u:?} is not https"));
            }
        }
        if let Some(methods) = &m.code_challenge_methods_supported {
            if !methods.iter().any(|x| x == "S256") {
                return Err("the provider does not support PKCE with S256".into());
            }
        }
        Ok(m)
    }
}
