//! Credentials: password hashing, access tokens (JWT) and refresh tokens.
//!
//! - Passwords: argon2id with the crate's default parameters and a random salt per hash;
//!   verification runs on the blocking pool because it is deliberately slow.
//! - Access tokens: HS256 JWTs signed with `JWT_SECRET`, carrying the user, session,
//!   organization, role and the organization's enabled frontends. Only HS256 is accepted,
//!   so `alg: none` and algorithm swaps fail validation.
//! - Refresh tokens: opaque, `base64url(user id ‖ session id ‖ 32 random bytes)`; only
//!   their SHA-256 is stored (in the user's stream), so the log never holds a usable token.

use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use universal_events::identity::{Frontend, Role};
use uuid::Uuid;

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (argon2 cost grows with input; nobody needs more).
pub const MAX_PASSWORD: usize = 256;

/// Hashes a password with argon2id and a fresh salt (PHC string).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2y$`, any cost), as legacy imports
/// bring them. Login accepts it and replaces it with argon2id.
pub fn is_legacy_hash(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// Whether `password` matches `hash`: an argon2 PHC string, or a bcrypt hash of an import.
/// An empty hash (a user who signs in only with Google) matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if is_legacy_hash(hash) {
        return bcrypt::verify(password, hash).unwrap_or(false);
    }
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a password nobody has, verified against when the e-mail is unknown, so that a
/// failed login takes about as long whether or not the account exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&Uuid::new_v4().to_string()).unwrap_or_default())
}

/// Why a password is too weak, if it is.
pub fn password_weakness(password: &str, email: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Some(format!("must be at least {MIN_PASSWORD} characters"));
    }
    if n > MAX_PASSWORD {
        return Some(format!("must be at most {MAX_PASSWORD} characters"));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < 3 {
        return Some(
            "must mix at least three of: lowercase, uppercase, digits, symbols".to_owned(),
        );
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if local.len() >= 3 && password.to_lowercase().contains(&local) {
        return Some("must not contain the e-mail address".to_owned());
    }
    None
}

/// Normalizes an e-mail address, or says why it is not one.
pub fn normalize_email(email: &str) -> Result<(String, String), &'static str> {
    let trimmed = email.trim();
    if trimmed.len() > 254 {
        return Err("must be at most 254 characters");
    }
    let (local, domain) = trimmed.rsplit_once('@').ok_or("must contain @")?;
    let ok_local = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let ok_domain = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok_local || !ok_domain {
        return Err("is not a valid e-mail address");
    }
    Ok((trimmed.to_owned(), trimmed.to_lowercase()))
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user.
    pub sub: Uuid,
    /// The session (refresh-token family) this token belongs to.
    pub sid: Uuid,
    /// The organization the session is scoped to.
    pub org: Option<Uuid>,
    /// The user's role in that organization.
    pub role: Option<Role>,
    /// Account-wide roles.
    pub roles: Vec<Role>,
    /// Frontends the organization has enabled.
    pub frontends: Vec<Frontend>,
    pub iat: i64,
    pub exp: i64,
}

/// Signing keys and token lifetimes.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Tokens already verified, with their claims, so that a client presenting the same
    /// token on every request pays for the signature check once, not per request. Keyed by
    /// the whole token text, so only the very token that was checked is found; an entry
    /// serves only until the token expires. This caches what the *token* says, never what
    /// the caller may do: ended sessions and rights are still looked up on every request
    /// (see `http::guard`), so logout and revocation act at once.
    verified: dashmap::DashMap<Box<str>, Claims>,
}

/// Verified tokens remembered at most; past this the memory starts over (one signature
/// check per active token again), so it stays bounded whatever the traffic.
const VERIFIED_MAX: usize = 10_000;

impl TokenKeys {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
            verified: dashmap::DashMap::new(),
        }
    }

    /// Signs an access token; returns it with its expiry.
    pub fn issue(&self, mut claims: Claims, now: DateTime<Utc>) -> anyhow::Result<(String, i64)> {
        claims.iat = now.timestamp();
        claims.exp = now.timestamp() + self.access_ttl.as_secs() as i64;
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((token, claims.exp))
    }

    /// Validates signature, algorithm and expiry. A token verified before and not yet
    /// expired is answered from memory.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let now = Utc::now().timestamp();
        if let Some(claims) = self.verified.get(token) {
            if claims.exp > now {
                return Ok(claims.clone());
            }
        }
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims;
        // Only tokens with time left are worth remembering (one within the leeway is
        // verified anew each time).
        if claims.exp > now {
            if self.verified.len() >= VERIFIED_MAX {
                self.verified.clear();
            }
            self.verified.insert(token.into(), claims.clone());
        }
        Ok(claims)
    }

    /// Tokens remembered as verified (for tests).
    pub fn verified_len(&self) -> usize {
        self.verified.len()
    }
}

/// A new refresh token for a session, and the hash to store.
pub fn new_refresh_token(user_id: Uuid, session_id: Uuid) -> (String, String) {
    let mut bytes = [0u8; 64];
    bytes[..16].copy_from_slice(user_id.as_bytes());
    bytes[16..32].copy_from_slice(session_id.as_bytes());
    OsRng.fill_bytes(&mut bytes[32..]);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

/// The user and session a refresh token names, if it is well-formed.
pub fn parse_refresh_token(token: &str) -> Option<(Uuid, Uuid)> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    if bytes.len() != 64 {
        return None;
    }
    let user = Uuid::from_slice(&bytes[..16]).ok()?;
    let session = Uuid::from_slice(&bytes[16..32]).ok()?;
    Some((user, session))
}

/// SHA-256 of a token, hex.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses `90`, `90s`, `15m`, `24h`, `7d` into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, "s"), |i| (&t[..i], &t[i..]));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 15m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_passwords_are_named_and_strong_ones_pass() {
        assert!(password_weakness("short", "a@b.co").is_some());
        assert!(password_weakness("alllowercaseletters", "a@b.co").is_some());
        assert!(password_weakness("Adalovelace#1", "adalovelace@b.co").is_some());
        assert!(password_weakness("Correct-Horse-9", "ada@b.co").is_none());
    }

    #[test]
    fn emails_are_normalized_to_lowercase_and_junk_is_refused() {
        assert_eq!(
            normalize_email(" Ada@Example.ORG ").unwrap().1,
            "ada@example.org"
        );
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "ada@example",
            "a b@example.org",
            "ada@ex..org",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refresh_tokens_carry_their_user_and_session() {
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, hash) = new_refresh_token(u, s);
        assert_eq!(parse_refresh_token(&token), Some((u, s)));
        assert_eq!(hash_token(&token), hash);
        assert_eq!(parse_refresh_token("not-a-token"), None);
    }

    /// Claims of a new user and session, in no organization.
    fn bare_claims() -> Claims {
        Claims {
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            org: None,
            role: None,
            roles: vec![],
            frontends: vec![],
            iat: 0,
            exp: 0,
        }
    }

    #[test]
    fn tokens_signed_with_another_key_or_without_one_are_refused() {
        let keys = TokenKeys::new(b"one", Duration::from_secs(60), Duration::from_secs(60));
        let other = TokenKeys::new(b"two", Duration::from_secs(60), Duration::from_secs(60));
        let claims = bare_claims();
        let (token, _) = keys.issue(claims.clone(), Utc::now()).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, claims.sub);
        assert!(other.verify(&token).is_err());
        // alg: none with the same claims.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = token.split('.').nth(1).unwrap();
        assert!(keys.verify(&format!("{header}.{body}.")).is_err());
        // Expired.
        let (old, _) = keys
            .issue(claims, Utc::now() - chrono::Duration::hours(2))
            .unwrap();
        assert!(keys.verify(&old).is_err());
    }

    #[test]
    fn a_remembered_token_is_only_the_very_token_verified_and_only_until_it_expires() {
        let keys = TokenKeys::new(b"one", Duration::from_secs(60), Duration::from_secs(60));
        let claims = bare_claims();
        let (token, _) = keys.issue(claims.clone(), Utc::now()).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, claims.sub);
        assert_eq!(keys.verified_len(), 1);
        // Answered from memory, the same claims.
        assert_eq!(keys.verify(&token).unwrap(), keys.verify(&token).unwrap());
        assert_eq!(keys.verified_len(), 1);
        // A token differing in one character of its signature is checked, and refused.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 10;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(keys.verify(&forged).is_err());
        // Expired tokens are never remembered, so they keep failing.
        let (old, _) = keys
            .issue(claims, Utc::now() - chrono::Duration::hours(2))
            .unwrap();
        assert!(keys.verify(&old).is_err());
        assert!(keys.verify(&old).is_err());
        assert_eq!(keys.verified_len(), 1);
    }

    #[test]
    fn durations_parse_like_the_seed_settings() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert_eq!(parse_duration("900").unwrap(), Duration::from_secs(900));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0m").is_err());
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("Correct-Horse-9").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("Correct-Horse-9", &hash));
        assert!(!verify_password("Correct-Horse-8", &hash));
        assert!(!verify_password("Correct-Horse-9", "garbage"));
    }
}
