//! WebAuthn ceremonies (webauthn-rs) and the level each credential reaches.
//!
//! - **Passkey enrollment**: resident key and user verification required, no attestation.
//!   Reaches AAL2 (a synced passkey never reaches more).
//! - **Security key enrollment**: user verification required, `direct` attestation verified
//!   against the configured CA list *and* AAGUID allow-list (`hardware_keys`), backup-eligible
//!   authenticators refused. Reaches AAL3. A key that fails attestation is refused on this
//!   path; it can still be enrolled as a passkey (AAL2).
//! - **Sign-in**: always with user verification. Usernameless (discoverable) or with an
//!   allow-list of the user's credentials (username-first, step-up, tap to resume).
//!
//! States are plain serde values the caller keeps server-side and takes once.

use aalgate_policy::{Aal, Timestamp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use der::Encode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

use webauthn_rs::prelude::{
    AttestationCaList, AttestationCaListBuilder, AttestationMetadata, Credential as WaCredential,
    DiscoverableAuthentication, ParsedAttestationData, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn,
    WebauthnBuilder, WebauthnError,
};
use webauthn_rs_proto::AuthenticatorTransport;

use crate::model::{Credential, CredentialKind, User};

/// Why a ceremony failed. Users see one constant sentence; this detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The gateway's WebAuthn settings are unusable (bad origin, unreadable CA file).
    #[error("WebAuthn configuration: {0}")]
    Config(String),
    /// The browser's response does not parse.
    #[error("malformed WebAuthn response: {0}")]
    Malformed(String),
    /// The response failed verification (wrong challenge, origin, RP id, signature, UV...).
    #[error("WebAuthn verification failed: {0}")]
    Rejected(String),
    /// A security key's attestation did not verify, or its model is not on the allow-list.
    #[error("security key not accepted for AAL3: {0}")]
    Untrusted(String),
    /// The signature counter went backwards: the key may have been cloned.
    #[error("signature counter regression on credential {0}")]
    CounterRegression(String),
    /// The credential is unknown, flagged, or not one of those this ceremony allowed.
    #[error("credential not allowed here")]
    NotAllowed,
}

/// The AAL3 allow-list: trusted attestation roots and the authenticator models (AAGUIDs)
/// accepted under them.
#[derive(Clone, Debug, Default)]
pub struct HardwareKeys {
    /// AAGUIDs of accepted hardware keys.
    pub aaguids: Vec<Uuid>,
    /// PEM certificates of the attestation roots (the vendors' CAs).
    pub ca_pems: Vec<String>,
}

/// What to enroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegKind {
    /// A passkey (AAL2).
    Passkey,
    /// An attested hardware security key (AAL3).
    SecurityKey,
}

/// Server-side state of an enrollment.
#[derive(Serialize, Deserialize)]
pub enum RegState {
    /// Passkey enrollment.
    Passkey(PasskeyRegistration),
    /// Security key enrollment with attestation.
    SecurityKey(PasskeyRegistration),
}

/// Server-side state of a sign-in.
#[derive(Serialize, Deserialize)]
pub enum AuthState {
    /// Against a known user's credentials (allowCredentials).
    Known(PasskeyAuthentication),
    /// Usernameless: the credential names its user.
    Discoverable(DiscoverableAuthentication),
}

/// A verified sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The credential used.
    pub credential_id: String,
    /// Its audit fingerprint.
    pub audit_id: String,
    /// The level reached.
    pub aal: Aal,
    /// RFC 8176 methods.
    pub amr: Vec<String>,
    /// The kind of credential.
    pub kind: CredentialKind,
}

/// A parsed sign-in response, before the user is known.
pub struct SignIn {
    resp: PublicKeyCredential,
}

impl SignIn {
    /// Parses the browser's JSON.
    pub fn parse(json: &[u8]) -> Result<SignIn, CeremonyError> {
        serde_json::from_slice(json)
            .map(|resp| SignIn { resp })
            .map_err(|e| CeremonyError::Malformed(e.to_string()))
    }

    /// The credential id (base64url) the browser used.
    pub fn credential_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.resp.get_credential_id())
    }

    /// The signed parts of the response: `authenticatorData`, `clientDataJSON` and the
    /// signature (the evidence of a request-bound ceremony).
    pub fn signed_parts(&self) -> (&[u8], &[u8], &[u8]) {
        let r = &self.resp.response;
        (&r.authenticator_data, &r.client_data_json, &r.signature)
    }

    /// The challenge `clientDataJSON` names (base64url), if it parses.
    pub fn challenge(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Cd {
            challenge: String,
        }
        serde_json::from_slice::<Cd>(&self.resp.response.client_data_json)
            .ok()
            .map(|c| c.challenge)
    }

    /// The user handle a discoverable credential returned.
    pub fn user_handle(&self) -> Option<Uuid> {
        self.resp
            .get_user_unique_id()
            .and_then(|b| Uuid::from_slice(b).ok())
    }
}

/// The relying party: webauthn-rs set up for the gateway's auth origin and RP id.
pub struct Ceremonies {
    webauthn: Webauthn,
    ca_list: Option<AttestationCaList>,
    /// Public keys (SPKI DER) of the configured certificates: a chain certificate with one of
    /// them is trusted too, for vendors (and test authenticators) that attest with a
    /// self-signed batch certificate rather than a CA-issued one.
    pinned: Vec<Vec<u8>>,
    aaguids: Vec<Uuid>,
    /// Keys the decoy credential of a made-up user name ([`Ceremonies::with_decoy_key`]).
    decoy_key: [u8; 32],
    /// Whose options a decoy looks like ([`Ceremonies::set_decoy_population`]); `None`
    /// until first set.
    population: std::sync::RwLock<Option<Arc<DecoyPopulation>>>,
}

/// What sign-in options show of one credential: its id's length and its transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialShape {
    /// Length of the credential id in bytes.
    pub id_len: usize,
    /// The transports the browser reported at enrollment, in order.
    pub transports: Option<Vec<AuthenticatorTransport>>,
}

/// The shapes of everyone's username-first options, on a hash ring keyed by the decoy key:
/// a made-up name takes the shape of the person after it on the ring, so its options look
/// like someone's, stay the same while the population does, and change for few names when
/// one person enrolls (as a real person's change only when they do). Each person has
/// [`RING_POINTS`] points, so each takes about the same share of made-up names (with one
/// point, shares would vary tenfold and a rarely copied shape would stand out as real).
#[derive(Debug, Default)]
pub struct DecoyPopulation {
    /// (point, index into `shapes`), sorted by point.
    ring: Vec<(u64, u32)>,
    shapes: Vec<Vec<CredentialShape>>,
}

/// Ring points per person.
pub const RING_POINTS: u32 = 32;

impl DecoyPopulation {
    /// The people a username-first sign-in would offer credentials for.
    fn of(users: &[User], key: &[u8; 32]) -> DecoyPopulation {
        let mut shapes = Vec::new();
        let mut ring = Vec::new();
        for u in users.iter().filter(|u| !u.disabled) {
            let shape = shape_of(&u.credentials);
            if shape.is_empty() {
                continue;
            }
            let Ok(i) = u32::try_from(shapes.len()) else {
                break;
            };
            for p in 0..RING_POINTS {
                let mut data = u.handle.as_bytes().to_vec();
                data.extend(p.to_be_bytes());
                ring.push((ring_point(key, b"person", &data), i));
            }
            shapes.push(shape);
        }
        ring.sort_unstable();
        DecoyPopulation { ring, shapes }
    }

    /// How many people's shapes it holds.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Whether it holds nobody.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// The shape `name` copies, and the ring point it copies it from.
    fn shape_for(&self, key: &[u8; 32], name: &str) -> Option<(u64, &[CredentialShape])> {
        let p = ring_point(key, b"name", name.as_bytes());
        let i = self.ring.partition_point(|(q, _)| *q < p);
        let (point, shape) = self.ring.get(i).or_else(|| self.ring.first())?;
        Some((*point, self.shapes.get(*shape as usize)?.as_slice()))
    }
}

/// What a username-first sign-in offers of `creds`: the usable ones, in order.
pub fn shape_of(creds: &[Credential]) -> Vec<CredentialShape> {
    creds
        .iter()
        .filter(|c| c.usable())
        .map(|c| {
            let inner: WaCredential = c.key.clone().into();
            CredentialShape {
                id_len: inner.cred_id.len(),
                transports: inner.transports,
            }
        })
        .collect()
}

fn ring_point(key: &[u8; 32], tag: &[u8], data: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::new()
        .chain_update(b"aalgate decoy ring\0")
        .chain_update(key)
        .chain_update(tag)
        .chain_update(b"\0")
        .chain_update(data)
        .finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The DER bodies of the PEM certificates in `pem`.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in pem.lines().map(str::trim) {
        if line.starts_with("-----BEGIN CERTIFICATE") {
            inside = true;
            b64.clear();
        } else if line.starts_with("-----END CERTIFICATE") {
            inside = false;
            if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(&b64) {
                out.push(d);
            }
        } else if inside {
            b64.push_str(line);
        }
    }
    out
}

fn rejected(e: WebauthnError) -> CeremonyError {
    CeremonyError::Rejected(format!("{e:?}"))
}

/// Sign-in options as the page's script expects them: a modal request, never conditional UI.
fn request_json(rcr: &impl Serialize) -> Result<serde_json::Value, CeremonyError> {
    let mut v = serde_json::to_value(rcr).map_err(|e| CeremonyError::Config(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("mediation");
    }
    Ok(v)
}

impl Ceremonies {
    /// `origin` is the auth origin (`public_origin`); `rp_id` its host or a registrable parent
    /// domain of it, so one passkey serves every app host.
    pub fn new(
        rp_id: &str,
        origin: &str,
        keys: &HardwareKeys,
    ) -> Result<Ceremonies, CeremonyError> {
        let url = Url::parse(origin)
            .map_err(|e| CeremonyError::Config(format!("origin {origin}: {e}")))?;
        let webauthn = WebauthnBuilder::new(rp_id, &url)
            .and_then(|b| b.rp_name("aalgate").build())
            .map_err(|e| {
                CeremonyError::Config(format!("rp_id {rp_id} with origin {origin}: {e:?}"))
            })?;
        let ca_list = if keys.ca_pems.is_empty() || keys.aaguids.is_empty() {
            None
        } else {
            let mut b = AttestationCaListBuilder::new();
            for pem in &keys.ca_pems {
                for aaguid in &keys.aaguids {
                    b.insert_device_pem(
                        pem.as_bytes(),
                        *aaguid,
                        "allow-listed hardware key".into(),
                        Default::default(),
                    )
                    .map_err(|e| CeremonyError::Config(format!("attestation CA: {e:?}")))?;
                }
            }
            Some(b.build())
        };
        let mut pinned = Vec::new();
        for der in keys.ca_pems.iter().flat_map(|p| pem_ders(p)) {
            use der::Decode;
            let cert = x509_cert::Certificate::from_der(&der)
                .map_err(|e| CeremonyError::Config(format!("attestation CA certificate: {e}")))?;
            let spki = cert
                .tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .map_err(|e| CeremonyError::Config(format!("attestation CA key: {e}")))?;
            pinned.push(spki);
        }
        if !keys.ca_pems.is_empty() && pinned.len() < keys.ca_pems.len() {
            return Err(CeremonyError::Config(
                "an attestation_ca file holds no PEM certificate".into(),
            ));
        }
        Ok(Ceremonies {
            webauthn,
            ca_list,
            pinned,
            aaguids: keys.aaguids.clone(),
            decoy_key: {
                use rand::RngCore;
                let mut k = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut k);
                k
            },
            population: Default::default(),
        })
    }

    /// Derives decoy credentials from `key`, a secret every instance sharing the directory
    /// shares: a made-up user name then gets the same options from every instance, as a real
    /// one does. Without it the key is random per process.
    pub fn with_decoy_key(mut self, key: [u8; 32]) -> Ceremonies {
        self.decoy_key = key;
        self
    }

    /// Sets whose options decoys look like: everyone in the directory (the caller refreshes
    /// it now and then). A decoy copies the shape of one real person's options (as many
    /// credentials, ids as long, the same transports) with ids of its own.
    pub fn set_decoy_population(&self, users: &[User]) {
        let p = Arc::new(DecoyPopulation::of(users, &self.decoy_key));
        if let Ok(mut g) = self.population.write() {
            *g = Some(p);
        }
    }

    /// The population decoys are drawn from, once set.
    pub fn decoy_population(&self) -> Option<Arc<DecoyPopulation>> {
        self.population.read().ok().and_then(|g| g.clone())
    }

    /// Whether AAL3 hardware keys can be enrolled (an allow-list is configured).
    pub fn hardware_keys_configured(&self) -> bool {
        self.ca_list.is_some()
    }

    /// Starts an enrollment: the options for `navigator.credentials.create` and the state.
    pub fn start_registration(
        &self,
        user: &User,
        kind: RegKind,
    ) -> Result<(serde_json::Value, RegState), CeremonyError> {
        let exclude: Vec<_> = user
            .credentials
            .iter()
            .map(|c| c.key.cred_id().clone())
            .collect();
        let exclude = (!exclude.is_empty()).then_some(exclude);
        match kind {
            RegKind::Passkey => {
                let (ccr, st) = self
                    .webauthn
                    .start_passkey_registration(user.handle, &user.id, &user.display_name, exclude)
                    .map_err(rejected)?;
                let mut v =
                    serde_json::to_value(&ccr).map_err(|e| CeremonyError::Config(e.to_string()))?;
                // Usernameless sign-in needs a discoverable credential.
                if let Some(sel) = v
                    .pointer_mut("/publicKey/authenticatorSelection")
                    .and_then(|s| s.as_object_mut())
                {
                    sel.insert("residentKey".into(), "required".into());
                    sel.insert("requireResidentKey".into(), true.into());
                }
                Ok((v, RegState::Passkey(st)))
            }
            RegKind::SecurityKey => {
                if self.ca_list.is_none() {
                    return Err(CeremonyError::Config(
                        "no hardware_keys allow-list (aaguids and attestation_ca) is configured"
                            .into(),
                    ));
                }
                // A passkey ceremony (UV required) that asks for `direct` attestation: webauthn-rs
                // verifies the attestation statement's signature; the trust decision (vendor
                // root or pinned certificate, AAGUID allow-list, not synced) is made in
                // `finish_registration`.
                let (ccr, st) = self
                    .webauthn
                    .start_passkey_registration(user.handle, &user.id, &user.display_name, exclude)
                    .map_err(rejected)?;
                let mut v =
                    serde_json::to_value(&ccr).map_err(|e| CeremonyError::Config(e.to_string()))?;
                if let Some(pk) = v.pointer_mut("/publicKey").and_then(|e| e.as_object_mut()) {
                    pk.insert("attestation".into(), "direct".into());
                    pk.insert("hints".into(), serde_json::json!(["security-key"]));
                }
                Ok((v, RegState::SecurityKey(st)))
            }
        }
    }

    /// Verifies an enrollment response and returns the new credential with its level.
    pub fn finish_registration(
        &self,
        json: &[u8],
        state: &RegState,
        now: Timestamp,
    ) -> Result<Credential, CeremonyError> {
        let resp: RegisterPublicKeyCredential =
            serde_json::from_slice(json).map_err(|e| CeremonyError::Malformed(e.to_string()))?;
        top_level_only(&resp.response.client_data_json)?;
        let (key, kind): (Passkey, CredentialKind) = match state {
            RegState::Passkey(st) => (
                self.webauthn
                    .finish_passkey_registration(&resp, st)
                    .map_err(rejected)?,
                CredentialKind::Passkey,
            ),
            RegState::SecurityKey(st) => {
                let k = self
                    .webauthn
                    .finish_passkey_registration(&resp, st)
                    .map_err(rejected)?;
                let inner: WaCredential = k.clone().into();
                self.trusted(&inner).map_err(CeremonyError::Untrusted)?;
                (k, CredentialKind::SecurityKey)
            }
        };
        let inner: WaCredential = key.clone().into();
        let aaguid = match inner.attestation.metadata {
            AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => {
                Some(aaguid)
            }
            _ => None,
        };
        let aal = match kind {
            // Attested, allow-listed, not backup eligible (webauthn-rs refused synced ones).
            CredentialKind::SecurityKey if !inner.backup_eligible && inner.user_verified => {
                Aal::Aal3
            }
            _ if inner.user_verified => Aal::Aal2,
            _ => Aal::Aal1,
        };
        Ok(Credential {
            id: URL_SAFE_NO_PAD.encode(key.cred_id()),
            kind,
            aaguid,
            aal,
            backup_eligible: inner.backup_eligible,
            created: now,
            last_used: None,
            flagged: None,
            key,
            after_provider: None,
        })
    }

    /// Whether a security key's attestation earns AAL3: a verified statement whose chain
    /// leads to a configured root (or contains a pinned certificate), an allow-listed AAGUID,
    /// user verification, and no backup eligibility (a synced credential is not hardware-bound).
    fn trusted(&self, c: &WaCredential) -> Result<Uuid, String> {
        let aaguid = match c.attestation.metadata {
            AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => {
                aaguid
            }
            ref m => return Err(format!("no attested model (metadata {m:?})")),
        };
        if !self.aaguids.contains(&aaguid) {
            return Err(format!("AAGUID {aaguid} is not on hardware_keys.aaguids"));
        }
        if c.backup_eligible {
            return Err("backup-eligible (synced) credential".into());
        }
        if !c.user_verified {
            return Err("no user verification".into());
        }
        if let Some(ca) = &self.ca_list {
            if matches!(c.verify_attestation(ca), Ok(Some(_))) {
                return Ok(aaguid);
            }
        }
        let chain = match &c.attestation.data {
            ParsedAttestationData::Basic(chain) | ParsedAttestationData::AttCa(chain) => chain,
            d => return Err(format!("attestation type {d:?} cannot be trusted")),
        };
        // The *signing* certificate (x5c[0], the only one webauthn-rs checked the statement
        // against) carries the public key of a configured certificate: the vendor's key made
        // the attestation. Certificates further down an unverified chain prove nothing.
        // (Chromium's virtual authenticator re-issues its self-signed batch certificate with a
        // fresh validity, under one fixed key.)
        let pinned = chain.first().is_some_and(|cert| {
            cert.tbs_certificate()
                .subject_public_key_info()
                .to_der()
                .is_ok_and(|spki| self.pinned.contains(&spki))
        });
        if pinned {
            Ok(aaguid)
        } else {
            Err("attestation chain not issued by a configured hardware_keys.attestation_ca".into())
        }
    }

    /// Starts a sign-in. `Some(creds)`: only these credentials may answer (an empty list gets
    /// a decoy, so an unknown user name looks like any other); `None`: usernameless.
    pub fn start_sign_in(
        &self,
        creds: Option<&[Credential]>,
    ) -> Result<(serde_json::Value, AuthState), CeremonyError> {
        self.start_sign_in_for("", creds)
    }

    /// As [`Ceremonies::start_sign_in`], with the typed user name that picks the decoy.
    pub fn start_sign_in_for(
        &self,
        name: &str,
        creds: Option<&[Credential]>,
    ) -> Result<(serde_json::Value, AuthState), CeremonyError> {
        match creds {
            None => {
                let (rcr, st) = self
                    .webauthn
                    .start_discoverable_authentication()
                    .map_err(rejected)?;
                Ok((request_json(&rcr)?, AuthState::Discoverable(st)))
            }
            Some(creds) => {
                let mut keys: Vec<Passkey> = creds
                    .iter()
                    .filter(|c| c.usable())
                    .map(|c| c.key.clone())
                    .collect();
                if keys.is_empty() {
                    let population = self.decoy_population();
                    let from = population
                        .as_deref()
                        .and_then(|p| p.shape_for(&self.decoy_key, name));
                    keys.extend(decoys(&self.decoy_key, name, from));
                }
                let (rcr, st) = self
                    .webauthn
                    .start_passkey_authentication(&keys)
                    .map_err(rejected)?;
                Ok((request_json(&rcr)?, AuthState::Known(st)))
            }
        }
    }

    /// As [`Ceremonies::start_sign_in_for`], with the challenge given instead of a random one:
    /// a ceremony bound to one request ([`crate::signing::challenge`]). webauthn-rs has no
    /// API for a chosen challenge, so it is set in both the options and the state's stable
    /// serde form (a base64url string in each); the finish then checks it like any other.
    pub fn start_sign_in_bound(
        &self,
        name: &str,
        creds: Option<&[Credential]>,
        challenge: &[u8; 32],
    ) -> Result<(serde_json::Value, AuthState), CeremonyError> {
        let (mut options, state) = self.start_sign_in_for(name, creds)?;
        let c = serde_json::Value::String(URL_SAFE_NO_PAD.encode(challenge));
        let bad =
            |what: &str| CeremonyError::Config(format!("unexpected {what} shape from webauthn-rs"));
        *options
            .pointer_mut("/publicKey/challenge")
            .ok_or_else(|| bad("options"))? = c.clone();
        let mut st =
            serde_json::to_value(&state).map_err(|e| CeremonyError::Config(e.to_string()))?;
        let slot = ["/Known/ast/challenge", "/Discoverable/ast/challenge"]
            .iter()
            .find_map(|p| st.pointer(p).is_some().then_some(*p))
            .ok_or_else(|| bad("state"))?;
        *st.pointer_mut(slot).ok_or_else(|| bad("state"))? = c;
        let state = serde_json::from_value(st).map_err(|e| CeremonyError::Config(e.to_string()))?;
        Ok((options, state))
    }

    /// Verifies a sign-in for `user` (already identified: from the ceremony's state, or from
    /// [`SignIn::user_handle`]) and updates the credential's counter and last use. `allowed`
    /// restricts which credentials count (step-up to AAL3: the allow-listed keys only).
    pub fn finish_sign_in(
        &self,
        resp: &SignIn,
        state: AuthState,
        user: &mut User,
        allowed: Option<&[String]>,
        now: Timestamp,
    ) -> Result<Verified, CeremonyError> {
        top_level_only(&resp.resp.response.client_data_json)?;
        let id = resp.credential_id();
        let Some(cred) = user.credentials.iter_mut().find(|c| c.id == id) else {
            return Err(CeremonyError::NotAllowed);
        };
        if !cred.usable() || allowed.is_some_and(|a| !a.contains(&id)) {
            return Err(CeremonyError::NotAllowed);
        }
        let result = match state {
            AuthState::Known(st) => self.webauthn.finish_passkey_authentication(&resp.resp, &st),
            AuthState::Discoverable(st) => {
                if resp.user_handle() != Some(user.handle) {
                    return Err(CeremonyError::NotAllowed);
                }
                self.webauthn
                    .finish_discoverable_authentication_v2(&resp.resp, st, &cred.key)
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                cred.flagged = Some(format!("signature counter went backwards at {}", now.0));
                return Err(CeremonyError::CounterRegression(cred.audit_id()));
            }
            Err(e) => return Err(rejected(e)),
        };
        if !result.user_verified() {
            return Err(CeremonyError::Rejected("user verification missing".into()));
        }
        cred.key.update_credential(&result);
        cred.last_used = Some(now);
        // A credential that became backup eligible (synced) stays at AAL2 at most.
        let aal = if result.backup_eligible() {
            cred.aal.min(Aal::Aal2)
        } else {
            cred.aal
        };
        let amr = match cred.kind {
            CredentialKind::SecurityKey => vec!["hwk".into(), "user".into(), "mfa".into()],
            CredentialKind::Passkey => vec!["swk".into(), "user".into(), "mfa".into()],
        };
        let v = Verified {
            credential_id: id,
            audit_id: cred.audit_id(),
            aal,
            amr,
            kind: cred.kind,
        };
        user.last_login = Some(now);
        Ok(v)
    }
}

/// Refuses a ceremony run inside a cross-origin frame (`crossOrigin: true` or a `topOrigin`):
/// the gateway's pages are never framed (`X-Frame-Options: DENY`), so such a response can only
/// come from a page that embedded them to phish a tap. webauthn-rs does not check this.
fn top_level_only(client_data_json: &[u8]) -> Result<(), CeremonyError> {
    #[derive(serde::Deserialize)]
    struct ClientData {
        #[serde(default, rename = "crossOrigin")]
        cross_origin: Option<bool>,
        #[serde(default, rename = "topOrigin")]
        top_origin: Option<String>,
    }
    let cd: ClientData = serde_json::from_slice(client_data_json)
        .map_err(|e| CeremonyError::Malformed(format!("clientDataJSON: {e}")))?;
    if cd.cross_origin == Some(true) || cd.top_origin.is_some() {
        return Err(CeremonyError::Rejected(
            "the ceremony ran in a cross-origin frame".into(),
        ));
    }
    Ok(())
}

/// Credentials that exist nowhere, so an unknown user name gets ordinary-looking options:
/// shaped like a real person's (`from`: the ring point copied and its shape: as many, ids as
/// long, the same transports; one 32-byte id without transports while nobody is enrolled),
/// with ids derived from `key`, the name and what is copied, so every instance that has `key`
/// gives the same name the same decoys, and a name whose copied shape changes gets wholly new
/// ids (never a longer or shorter version of the old ones, which no real key would show).
fn decoys(key: &[u8; 32], name: &str, from: Option<(u64, &[CredentialShape])>) -> Vec<Passkey> {
    let fallback = [CredentialShape {
        id_len: 32,
        transports: None,
    }];
    let (point, shape) = from.unwrap_or((0, &fallback));
    shape
        .iter()
        .enumerate()
        .filter_map(|(i, s)| decoy(key, name, point, i, s))
        .collect()
}

/// The `i`th decoy credential of `name`, copying ring point `point`.
pub(crate) fn decoy(
    key: &[u8; 32],
    name: &str,
    point: u64,
    i: usize,
    shape: &CredentialShape,
) -> Option<Passkey> {
    use sha2::{Digest, Sha256};
    let mut id = Vec::with_capacity(shape.id_len + 32);
    let mut block = 0u32;
    while id.len() < shape.id_len {
        id.extend(
            Sha256::new()
                .chain_update(b"aalgate decoy credential\0")
                .chain_update(key)
                .chain_update(point.to_be_bytes())
                .chain_update((i as u32).to_be_bytes())
                .chain_update((shape.id_len as u32).to_be_bytes())
                .chain_update(block.to_be_bytes())
                .chain_update(name.as_bytes())
                .finalize(),
        );
        block += 1;
    }
    id.truncate(shape.id_len);
    let c = WaCredential {
        cred_id: id,
        cred: webauthn_rs::prelude::COSEKey {
            type_: webauthn_rs::prelude::COSEAlgorithm::ES256,
            key: webauthn_rs::prelude::COSEKeyType::EC_EC2(webauthn_rs::prelude::COSEEC2Key {
                curve: webauthn_rs::prelude::ECDSACurve::SECP256R1,
                x: vec![1u8; 32],
                y: vec![2u8; 32],
            }),
        },
        counter: 0,
        transports: shape.transports.clone(),
        user_verified: true,
        backup_eligible: false,
        backup_state: false,
        // The policy type is not re-exported; its serde form is stable.
        registration_policy: serde_json::from_value(serde_json::json!("required")).ok()?,
        extensions: Default::default(),
        attestation: Default::default(),
        attestation_format: webauthn_rs::prelude::AttestationFormat::None,
    };
    Some(Passkey::from(c))
}

#[cfg(test)]
mod decoy_tests {
    use super::*;

    fn cred(id_len: usize, transports: &[AuthenticatorTransport], flagged: bool) -> Credential {
        let shape = CredentialShape {
            id_len,
            transports: Some(transports.to_vec()),
        };
        // Any key of the right shape: a real one's id is as random as a decoy's.
        let key = decoy(&[7u8; 32], &Uuid::new_v4().to_string(), 0, 0, &shape).unwrap();
        Credential {
            id: URL_SAFE_NO_PAD.encode(key.cred_id()),
            kind: CredentialKind::Passkey,
            aaguid: None,
            aal: Aal::Aal2,
            backup_eligible: false,
            created: Timestamp(0),
            last_used: None,
            flagged: flagged.then(|| "counter went backwards".into()),
            key,
            after_provider: None,
        }
    }

    fn person(id: &str, credentials: Vec<Credential>, disabled: bool) -> User {
        use sha2::{Digest, Sha256};
        // A fixed handle per name: the ring, and so each test, is the same on every run.
        let d = Sha256::digest(id.as_bytes());
        User {
            id: id.into(),
            display_name: id.into(),
            handle: Uuid::from_slice(&d[..16]).unwrap(),
            disabled,
            proofed_aal: Aal::Aal2,
            created: Timestamp(0),
            last_login: None,
            disabled_by: None,
            credentials,
        }
    }

    fn rp(key: u8) -> Ceremonies {
        Ceremonies::new(
            "localhost",
            "http://localhost:8080",
            &HardwareKeys::default(),
        )
        .unwrap()
        .with_decoy_key([key; 32])
    }

    /// The allowed credentials of username-first options for `name` with `creds`: (id,
    /// transports).
    fn allowed_for(
        rp: &Ceremonies,
        name: &str,
        creds: &[Credential],
    ) -> Vec<(String, serde_json::Value)> {
        let (o, _) = rp.start_sign_in_for(name, Some(creds)).unwrap();
        o["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_string(),
                    c["transports"].clone(),
                )
            })
            .collect()
    }

    /// A made-up name's options (nobody's credentials: a decoy).
    fn allowed(rp: &Ceremonies, name: &str) -> Vec<(String, serde_json::Value)> {
        allowed_for(rp, name, &[])
    }

    fn shape_of_options(a: &[(String, serde_json::Value)]) -> Vec<(usize, serde_json::Value)> {
        a.iter()
            .map(|(id, t)| (URL_SAFE_NO_PAD.decode(id).unwrap().len(), t.clone()))
            .collect()
    }

    fn real_options(rp: &Ceremonies, u: &User) -> Vec<(usize, serde_json::Value)> {
        shape_of_options(&allowed_for(rp, &u.id, &u.credentials))
    }

    /// A made-up name's options have the shape of some enrolled, active person's (never a
    /// disabled person's, never with a flagged credential), every shape of the population
    /// turns up, and two instances with the same key and directory agree on every name.
    #[test]
    fn decoys_copy_the_shape_of_real_peoples_options() {
        use AuthenticatorTransport::{Hybrid, Internal, Nfc, Usb};
        let people = vec![
            person("ann", vec![cred(16, &[Internal, Hybrid], false)], false),
            person(
                "bo",
                vec![
                    cred(64, &[Usb, Nfc], false),
                    cred(48, &[Usb], true),
                    cred(20, &[Hybrid, Internal], false),
                ],
                false,
            ),
            person("cy", vec![cred(80, &[Nfc], false)], true),
            person("di", vec![cred(96, &[Usb], true)], false),
            person("ed", vec![], false),
        ];
        let (a, b) = (rp(1), rp(1));
        a.set_decoy_population(&people);
        // The other instance read the directory in another order.
        b.set_decoy_population(&people.iter().rev().cloned().collect::<Vec<_>>());
        assert_eq!(a.decoy_population().unwrap().len(), 2);
        let shapes: Vec<_> = people[..2].iter().map(|u| real_options(&a, u)).collect();
        assert_eq!(
            shapes[0],
            vec![(16, serde_json::json!(["internal", "hybrid"]))]
        );
        assert_eq!(
            shapes[1],
            vec![
                (64, serde_json::json!(["usb", "nfc"])),
                (20, serde_json::json!(["hybrid", "internal"])),
            ]
        );
        let mut seen = [0usize; 2];
        for i in 0..200 {
            let name = format!("made-up-{i}");
            let on_a = allowed(&a, &name);
            let shape = shape_of_options(&on_a);
            let which = shapes.iter().position(|s| *s == shape);
            assert!(which.is_some(), "{name}: {shape:?} is nobody's shape");
            seen[which.unwrap_or(0)] += 1;
            assert_eq!(on_a, allowed(&b, &name), "{name}: instances differ");
            assert_eq!(on_a, allowed(&a, &name), "{name}: differs over time");
        }
        assert!(
            seen.iter().all(|n| *n > 20),
            "both shapes turn up: {seen:?}"
        );
        // Another deployment's key: other ids.
        let c = rp(2);
        c.set_decoy_population(&people);
        assert_ne!(allowed(&a, "made-up-1"), allowed(&c, "made-up-1"));
    }

    /// One more person enrolling changes the decoy of few names (those now nearest to them on
    /// the ring), not all: a name's options do not jump about as the directory grows.
    #[test]
    fn an_enrollment_moves_few_decoys() {
        use AuthenticatorTransport::{Internal, Usb};
        let mut people: Vec<User> = (0..20)
            .map(|i| {
                let t = if i % 2 == 0 { Internal } else { Usb };
                person(&format!("p{i}"), vec![cred(16 + i, &[t], false)], false)
            })
            .collect();
        let a = rp(3);
        a.set_decoy_population(&people);
        let names: Vec<String> = (0..400).map(|i| format!("n{i}")).collect();
        let before: Vec<_> = names.iter().map(|n| allowed(&a, n)).collect();
        people.push(person("new", vec![cred(77, &[Usb], false)], false));
        a.set_decoy_population(&people);
        let mut moved = 0;
        for (n, b) in names.iter().zip(&before) {
            let now = allowed(&a, n);
            if now == *b {
                continue;
            }
            moved += 1;
            // Wholly new ids: a real key's id never grows or shrinks.
            let (old, new) = (
                URL_SAFE_NO_PAD.decode(&b[0].0).unwrap(),
                URL_SAFE_NO_PAD.decode(&now[0].0).unwrap(),
            );
            let common = old.iter().zip(&new).take_while(|(x, y)| x == y).count();
            assert!(common < 4, "{n}: the new decoy id extends the old one");
        }
        assert!(moved < 100, "{moved} of 400 decoys changed");
        assert!(moved > 0, "the newcomer takes some names");
    }

    /// Everyone takes about the same share of made-up names: a shape copied far less often
    /// than its owners' number would say would mark its owners' names as the real ones.
    #[test]
    fn everyone_takes_a_similar_share_of_decoys() {
        let people: Vec<User> = (0..50)
            .map(|i| person(&format!("p{i}"), vec![cred(16 + i, &[], false)], false))
            .collect();
        let key = [5u8; 32];
        let pop = DecoyPopulation::of(&people, &key);
        let mut counts = std::collections::HashMap::new();
        let names = 20_000;
        for i in 0..names {
            let (_, shape) = pop.shape_for(&key, &format!("name-{i}")).unwrap();
            *counts.entry(shape[0].id_len).or_insert(0usize) += 1;
        }
        let avg = names / people.len();
        assert_eq!(counts.len(), people.len(), "everyone is copied");
        for (len, n) in counts {
            assert!(
                n * 5 > avg * 2 && n < avg * 2,
                "the person with {len}-byte ids takes {n} names, the average is {avg}"
            );
        }
    }

    /// Before anyone is enrolled (or before the directory is read) a decoy is one credential.
    #[test]
    fn without_a_population_a_decoy_is_one_credential() {
        let a = rp(4);
        assert!(a.decoy_population().is_none());
        assert_eq!(
            shape_of_options(&allowed(&a, "x")),
            vec![(32, serde_json::Value::Null)]
        );
        a.set_decoy_population(&[]);
        assert!(a.decoy_population().is_some_and(|p| p.is_empty()));
        assert_eq!(allowed(&a, "x").len(), 1);
    }
}
