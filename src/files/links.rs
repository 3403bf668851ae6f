//! Share links: `/s/{token}`, where the token carries the file and link ids and an HMAC
//! (SHA-256, truncated to 128 bits) of both under a server secret. A token cannot be made up
//! or altered; whether the link still works (not revoked, not expired, downloads left) is
//! read from the file's actor and the download counter, so revocation acts at once.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const TAG: usize = 16;

/// The signing key of share links.
#[derive(Clone)]
pub struct LinkKey(Vec<u8>);

impl LinkKey {
    /// `FILE_LINK_SECRET` when set; otherwise a random key made once per database, so that
    /// every process of a deployment checks the links any of them made.
    pub async fn load(secret: Option<&str>, pool: &PgPool) -> anyhow::Result<Self> {
        if let Some(s) = secret.filter(|s| !s.is_empty()) {
            return Ok(Self(s.as_bytes().to_vec()));
        }
        let mut fresh = vec![0u8; 32];
        argon2::password_hash::rand_core::RngCore::fill_bytes(
            &mut argon2::password_hash::rand_core::OsRng,
            &mut fresh,
        );
        sqlx::query("INSERT INTO file_link_key (secret) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&fresh)
            .execute(pool)
            .await?;
        let key: Vec<u8> = sqlx::query_scalar("SELECT secret FROM file_link_key")
            .fetch_one(pool)
            .await?;
        Ok(Self(key))
    }

    fn mac(&self, file: Uuid, link: Uuid) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(file.as_bytes());
        mac.update(link.as_bytes());
        mac
    }

    /// The token of a link (URL-safe base64, 64 characters).
    pub fn token(&self, file: Uuid, link: Uuid) -> String {
        let tag = self.mac(file, link).finalize().into_bytes();
        let mut raw = Vec::with_capacity(32 + TAG);
        raw.extend_from_slice(file.as_bytes());
        raw.extend_from_slice(link.as_bytes());
        raw.extend_from_slice(&tag[..TAG]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The (file, link) a token names, if its signature holds.
    pub fn verify(&self, token: &str) -> Option<(Uuid, Uuid)> {
        if token.len() > 100 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if raw.len() != 32 + TAG {
            return None;
        }
        let file = Uuid::from_slice(&raw[..16]).ok()?;
        let link = Uuid::from_slice(&raw[16..32]).ok()?;
        self.mac(file, link)
            .verify_truncated_left(&raw[32..])
            .ok()
            .map(|_| (file, link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_link_and_an_altered_one_is_refused() {
        let key = LinkKey(b"secret".to_vec());
        let (file, link) = (Uuid::new_v4(), Uuid::new_v4());
        let token = key.token(file, link);
        assert_eq!(key.verify(&token), Some((file, link)));
        let mut bad = token.clone().into_bytes();
        bad[40] = if bad[40] == b'A' { b'B' } else { b'A' };
        assert_eq!(key.verify(std::str::from_utf8(&bad).unwrap()), None);
        assert_eq!(LinkKey(b"other".to_vec()).verify(&token), None);
        assert_eq!(key.verify("short"), None);
    }
}
