//! TOTP (RFC 6238) second factors for human admins and approvers: HMAC-SHA-1,
//! six digits, 30-second steps, the parameters every authenticator app
//! accepts. Codes are computed by `totp-rs`; this module adds what a server
//! needs around it: a fresh 160-bit secret, the `otpauth://` enrolment URI,
//! and verification that reports the matching time step, so the caller can
//! refuse a code that was already used (RFC 6238 section 5.2).

use totp_rs::{Algorithm, Secret, TOTP};
use zeroize::Zeroizing;

/// Seconds per step.
pub const TOTP_STEP: u64 = 30;
/// Digits per code.
pub const TOTP_DIGITS: usize = 6;
/// Steps accepted either side of now, for clock drift and typing time.
pub const TOTP_SKEW_STEPS: u64 = 1;
/// Secret length: 160 bits, as RFC 4226 recommends.
pub const TOTP_SECRET_LEN: usize = 20;

/// A TOTP secret. Zeroized on drop; `Debug` never shows it.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid TOTP secret: {0}")]
pub struct TotpError(String);

impl TotpSecret {
    /// A fresh random secret from the OS-seeded CSPRNG.
    pub fn generate() -> Self {
        let bytes: [u8; TOTP_SECRET_LEN] = rand::random();
        TotpSecret(Zeroizing::new(bytes.to_vec()))
    }

    /// A secret from its raw bytes (as unsealed from the store).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, TotpError> {
        if bytes.len() < 16 {
            return Err(TotpError(format!(
                "{} bytes; at least 16 are required",
                bytes.len()
            )));
        }
        Ok(TotpSecret(Zeroizing::new(bytes)))
    }

    /// A secret from its base32 text (as an authenticator app shows it).
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let bytes = Secret::Encoded(text.trim().replace(' ', "").to_uppercase())
            .to_bytes()
            .map_err(|e| TotpError(format!("{e:?}")))?;
        TotpSecret::from_bytes(bytes)
    }

    /// The raw bytes, to seal for storage.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base32 without padding, what users type into an authenticator app.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(Secret::Raw(self.0.to_vec()).to_encoded().to_string())
    }

    /// The `otpauth://totp/...` URI authenticator apps read (usually as a QR code).
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let issuer = percent_encode(issuer);
        let account = percent_encode(account);
        Zeroizing::new(format!(
            "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
            self.to_base32().as_str()
        ))
    }

    fn totp(&self) -> TOTP {
        TOTP {
            algorithm: Algorithm::SHA1,
            digits: TOTP_DIGITS,
            skew: 0,
            step: TOTP_STEP,
            secret: self.0.to_vec(),
        }
    }

    /// The code for a Unix time (for tests and for the CLI's `--totp-secret`
    /// helper in scripted set-ups).
    pub fn code_at(&self, unix: u64) -> String {
        self.totp().generate(unix)
    }

    /// Checks `code` at Unix time `now`, accepting [`TOTP_SKEW_STEPS`] either
    /// side. Returns the matching step (`unix / 30`); the caller refuses a step
    /// not greater than the last one it accepted for this secret. Every
    /// candidate is compared in constant time.
    pub fn verify(&self, code: &str, now: u64) -> Option<u64> {
        let code = code.trim();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let totp = self.totp();
        let current = now / TOTP_STEP;
        let mut found = None;
        for step in current.saturating_sub(TOTP_SKEW_STEPS)..=current + TOTP_SKEW_STEPS {
            let expected = totp.generate(step * TOTP_STEP);
            let equal = expected
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if equal && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986): safe
/// as one path segment or query value whatever the input.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column, truncated to six digits.
    #[test]
    fn rfc6238_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap();
        for (t, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(secret.code_at(t), code, "t={t}");
        }
    }

    #[test]
    fn verify_accepts_one_step_of_drift_and_reports_it() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_015;
        let step = now / TOTP_STEP;
        assert_eq!(secret.verify(&secret.code_at(now), now), Some(step));
        assert_eq!(
            secret.verify(&secret.code_at(now - 30), now),
            Some(step - 1)
        );
        assert_eq!(
            secret.verify(&secret.code_at(now + 30), now),
            Some(step + 1)
        );
        assert_eq!(secret.verify(&secret.code_at(now - 60), now), None);
        assert_eq!(secret.verify(&secret.code_at(now + 60), now), None);
        assert_eq!(secret.verify("", now), None);
        assert_eq!(secret.verify("12345", now), None);
        assert_eq!(secret.verify("abcdef", now), None);
        let other = TotpSecret::generate();
        // One in a million chance per step of a collision; three steps checked.
        let foreign = other.code_at(now);
        if secret.verify(&foreign, now).is_some() {
            assert_eq!(foreign, secret.code_at(now));
        }
    }

    #[test]
    fn base32_round_trip_and_uri() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap();
        assert_eq!(
            secret.to_base32().as_str(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let back = TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(back.as_bytes(), secret.as_bytes());
        assert_eq!(
            secret
                .otpauth_uri("Portcullis", "alice@example.com")
                .as_str(),
            "otpauth://totp/Portcullis:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Portcullis&algorithm=SHA1&digits=6&period=30"
        );
        assert!(TotpSecret::from_bytes(vec![1; 10]).is_err());
        assert!(format!("{secret:?}").contains(".."));
    }
}
