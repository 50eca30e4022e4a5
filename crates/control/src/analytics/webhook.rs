//! Alert delivery to a webhook: JSON, signed with HMAC-SHA256 over
//! `<timestamp>.<body>` so a receiver can check origin and freshness:
//!
//! ```text
//! X-Portcullis-Timestamp: 1763934000
//! X-Portcullis-Signature: sha256=<hex HMAC-SHA256(key, "1763934000." + body)>
//! ```
//!
//! Delivery is best effort with three tries; the alert itself is already in
//! the store and the audit log, which are the record of truth.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::SecretHeaders;
use crate::otlp::Poster;

/// Signature header.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature";
/// Timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-portcullis-timestamp";

/// A configured alert webhook.
pub struct Webhook {
    uri: http::Uri,
    key: zeroize::Zeroizing<Vec<u8>>,
    poster: Arc<Poster>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// `sha256=<hex>` over `<timestamp>.<body>`.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhook {
    /// A webhook posting to `uri`, signing with `key`.
    pub fn new(uri: http::Uri, key: Vec<u8>, poster: Arc<Poster>) -> Self {
        Webhook {
            uri,
            key: zeroize::Zeroizing::new(key),
            poster,
        }
    }

    /// Sends `body` in the background.
    pub fn deliver(self: &Arc<Self>, body: String) {
        let hook = self.clone();
        tokio::spawn(async move {
            let body = Bytes::from(body);
            let mut delay = Duration::from_millis(500);
            for attempt in 1..=3 {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                let mut headers = SecretHeaders::default();
                let signature = sign(&hook.key, now, &body);
                if let (Ok(sig), Ok(ts)) = (
                    http::HeaderValue::from_str(&signature),
                    http::HeaderValue::from_str(&now.to_string()),
                ) {
                    headers
                        .0
                        .push((http::HeaderName::from_static(SIGNATURE_HEADER), sig));
                    headers
                        .0
                        .push((http::HeaderName::from_static(TIMESTAMP_HEADER), ts));
                }
                match hook
                    .poster
                    .post(
                        &hook.uri,
                        "application/json",
                        &headers,
                        body.clone(),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "alert webhook delivery failed");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // HMAC-SHA256(key="key", "1.{}") computed independently with Python's hmac.
        let got = sign(b"key", 1, b"{}");
        assert_eq!(
            got,
            "sha256=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }
}
