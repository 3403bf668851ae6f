//! Sign-in with Google: verifies a Google ID token (a JWT signed with RS256) against Google's
//! published keys (a JWKS), fetched over HTTP.
//!
//! The keys are cached for `GOOGLE_JWKS_TTL_SECS`. A token whose key id is not in the cache
//! makes the keys be fetched again (Google rotates them), but at most once per
//! `GOOGLE_JWKS_REFETCH_SECS`, so that made-up key ids cannot turn this process into a
//! hammer. Each fetch has a time limit and a size limit. The cache holds only Google's public
//! keys, never application state, so processes sharing one database need not agree on it.
//!
//! The checks: signature (RS256 only, by the key its `kid` names), `iss` (Google's two
//! issuer spellings), `aud` (our `GOOGLE_CLIENT_ID`), `exp` (60 s leeway), and
//! `email_verified`.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use crate::Config;

/// Google's two spellings of its issuer.
pub const ISSUERS: [&str; 2] = ["accounts.google.com", "https://accounts.google.com"];
/// Largest JWKS accepted (Google's is about 1 KiB).
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Keys kept from one JWKS, at most.
const MAX_KEYS: usize = 32;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// No `GOOGLE_CLIENT_ID` is set: Google sign-in is off.
    #[error("Google sign-in is not configured on this server")]
    NotConfigured,
    /// The token is not a valid Google ID token for this client.
    #[error("{0}")]
    Invalid(String),
    /// Google's keys could not be fetched.
    #[error("Google's signing keys could not be fetched: {0}")]
    Unavailable(String),
}

/// What a verified token says about its holder.
#[derive(Debug, Clone)]
pub struct GoogleIdentity {
    /// Google's stable account id.
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    email: Option<String>,
    /// A boolean, or the text `"true"` in some older tokens.
    email_verified: Option<Value>,
    name: Option<String>,
}

struct Cached {
    keys: Vec<Jwk>,
    fetched: Instant,
}

/// The verifier of one process; see the module comment.
pub struct GoogleVerifier {
    client_id: Option<String>,
    jwks_url: String,
    ttl: Duration,
    refetch_every: Duration,
    http: reqwest::Client,
    cache: RwLock<Option<Cached>>,
    /// One fetch at a time; a caller that waited here finds the fresh keys in the cache.
    fetching: Mutex<()>,
}

impl GoogleVerifier {
    pub fn from_config(config: &Config) -> Self {
        let timeout = Duration::from_secs(config.google_jwks_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self {
            client_id: config
                .google_client_id
                .as_ref()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty()),
            jwks_url: config.google_jwks_url.clone(),
            ttl: Duration::from_secs(config.google_jwks_ttl_secs),
            refetch_every: Duration::from_secs(config.google_jwks_refetch_secs),
            http,
            cache: RwLock::new(None),
            fetching: Mutex::new(()),
        }
    }

    /// Verifies `token` and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<GoogleIdentity, GoogleError> {
        let client_id = self
            .client_id
            .as_deref()
            .ok_or(GoogleError::NotConfigured)?;
        let invalid = |why: &str| GoogleError::Invalid(why.to_owned());
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| invalid("the ID token is not a JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(invalid("the ID token must be signed with RS256"));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("the ID token names no signing key (kid)"))?;
        let jwk = self
            .key(&kid)
            .await?
            .ok_or_else(|| invalid("the ID token is signed with a key Google does not publish"))?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| invalid("Google's key for this token is not an RSA key"))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[client_id]);
        validation.set_issuer(&ISSUERS);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "the ID token has expired",
                K::InvalidAudience => "the ID token was issued for another client",
                K::InvalidIssuer => "the ID token was not issued by Google",
                K::InvalidSignature => "the ID token's signature is not valid",
                K::MissingRequiredClaim(_) => "the ID token lacks a required claim",
                _ => "the ID token is not valid",
            })
        })?;
        let claims = data.claims;
        let verified = match &claims.email_verified {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        let email = claims
            .email
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| invalid("the ID token carries no e-mail address"))?;
        if !verified {
            return Err(invalid("Google has not verified this e-mail address"));
        }
        Ok(GoogleIdentity {
            subject: claims.sub,
            email,
            name: claims.name.filter(|n| !n.trim().is_empty()),
        })
    }

    /// The key named `kid`: from the cache while it is fresh, else fetched.
    async fn key(&self, kid: &str) -> Result<Option<Jwk>, GoogleError> {
        let find = |c: &Cached| {
            JwkSet {
                keys: c.keys.clone(),
            }
            .find(kid)
            .cloned()
        };
        if let Some(c) = self.cache.read().await.as_ref() {
            let fresh = c.fetched.elapsed() < self.ttl;
            if let Some(key) = find(c).filter(|_| fresh) {
                return Ok(Some(key));
            }
            // Known keys are fresh, only this kid is unknown: refetch at most so often.
            if fresh && c.fetched.elapsed() < self.refetch_every {
                return Ok(None);
            }
        }
        let _one = self.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(c) = self.cache.read().await.as_ref() {
            if c.fetched.elapsed() < self.refetch_every.min(self.ttl) {
                return Ok(find(c));
            }
        }
        let keys = match self.fetch().await {
            Ok(keys) => keys,
            Err(e) => {
                // Keys past their time still beat refusing every sign-in while Google (or
                // the way to it) is down; a key Google withdrew is not in use any more.
                if let Some(key) = self.cache.read().await.as_ref().and_then(find) {
                    tracing::warn!(error = %e, "using Google keys past their time");
                    return Ok(Some(key));
                }
                return Err(e);
            }
        };
        let fresh = Cached {
            keys,
            fetched: Instant::now(),
        };
        let key = find(&fresh);
        *self.cache.write().await = Some(fresh);
        Ok(key)
    }

    /// Fetches the JWKS, within the client's time limit and [`MAX_JWKS_BYTES`]. Keys this
    /// library cannot read are skipped rather than failing the whole set.
    async fn fetch(&self) -> Result<Vec<Jwk>, GoogleError> {
        let unavailable = |e: &dyn std::fmt::Display| GoogleError::Unavailable(e.to_string());
        let mut res = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        if !res.status().is_success() {
            return Err(unavailable(&format!(
                "the JWKS URL answered {}",
                res.status()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| unavailable(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(unavailable(&"the JWKS is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        let raw: RawSet = serde_json::from_slice(&body).map_err(|e| unavailable(&e))?;
        Ok(raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .take(MAX_KEYS)
            .collect())
    }
}
