//! Pseudonymization of personal data in audit records: configured fields are
//! replaced by a keyed hash (HMAC-SHA256 under a key kept outside the
//! database) before the record becomes a leaf. The same value always maps to
//! the same pseudonym, so records stay linkable ("what did this address do?")
//! without the log exposing the person, and without the key nobody can test a
//! guess. The clear value can be kept beside the leaf for a retention period,
//! then it is deleted; the leaf never changes, so verification keeps working.

use std::time::Duration;

use hmac::{Hmac, Mac};
use portcullis_audit::AuditRecord;
use portcullis_store::PersonalValue;
use serde::Deserialize;
use sha2::Sha256;

/// A record field that may hold personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonalField {
    /// Who acted (an agent name today; a person once humans are federated).
    Principal,
    /// The client's IP address.
    SourceIp,
    /// The credential description (SPIFFE id and serial).
    Credential,
}

impl PersonalField {
    /// The record field's name.
    pub fn name(self) -> &'static str {
        match self {
            PersonalField::Principal => "principal",
            PersonalField::SourceIp => "source_ip",
            PersonalField::Credential => "credential",
        }
    }

    fn slot(self, record: &mut AuditRecord) -> &mut Option<String> {
        match self {
            PersonalField::Principal => &mut record.principal,
            PersonalField::SourceIp => &mut record.source_ip,
            PersonalField::Credential => &mut record.credential,
        }
    }
}

/// Replaces personal fields with keyed hashes; see the module docs.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
    fields: Vec<PersonalField>,
    retention: Option<Duration>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pseudonymizer")
            .field("fields", &self.fields)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Pseudonymizer {
    /// A pseudonymizer for `fields` under `key`; clear values are kept for
    /// `retention` when given, otherwise not at all.
    pub fn new(key: &[u8; 32], fields: Vec<PersonalField>, retention: Option<Duration>) -> Self {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
        Pseudonymizer {
            mac,
            fields,
            retention,
        }
    }

    /// The pseudonym of a value: `p:` and 128 bits of its keyed hash, in hex.
    pub fn pseudonym(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("p:{}", hex::encode(&digest[..16]))
    }

    /// Pseudonymizes a batch in place and returns the clear values to keep.
    pub fn apply(&self, batch: &mut [AuditRecord], now_ms: i64) -> Vec<PersonalValue> {
        let mut keep = Vec::new();
        for (i, record) in batch.iter_mut().enumerate() {
            for &field in &self.fields {
                let slot = field.slot(record);
                let Some(value) = slot.take() else {
                    continue;
                };
                *slot = Some(self.pseudonym(&value));
                if let Some(retention) = self.retention {
                    keep.push(PersonalValue {
                        record: i,
                        field: field.name(),
                        value,
                        expires_ms: now_ms + retention.as_millis() as i64,
                    });
                }
            }
        }
        keep
    }
}

#[allow(clippy::panic)]
fn unreachable_key() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts any key length")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_become_stable_keyed_pseudonyms() {
        let p = Pseudonymizer::new(
            &[1; 32],
            vec![PersonalField::SourceIp, PersonalField::Principal],
            Some(Duration::from_secs(60)),
        );
        let mut batch = vec![
            AuditRecord {
                source_ip: Some("10.0.0.7".into()),
                principal: Some("alice".into()),
                credential: Some("spiffe://x serial=1".into()),
                ..AuditRecord::default()
            },
            AuditRecord {
                source_ip: Some("10.0.0.7".into()),
                ..AuditRecord::default()
            },
        ];
        let kept = p.apply(&mut batch, 1_000);
        assert_eq!(batch[0].source_ip, batch[1].source_ip, "linkable");
        let pseudo = batch[0].source_ip.clone().unwrap();
        assert!(pseudo.starts_with("p:") && pseudo.len() == 34, "{pseudo}");
        assert!(!pseudo.contains("10.0.0.7"));
        assert_eq!(batch[0].credential.as_deref(), Some("spiffe://x serial=1"));
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].value, "10.0.0.7");
        assert_eq!(kept[0].expires_ms, 61_000);
        // Another key, another pseudonym: a guess cannot be tested without it.
        let other = Pseudonymizer::new(&[2; 32], vec![PersonalField::SourceIp], None);
        assert_ne!(other.pseudonym("10.0.0.7"), pseudo);
        assert!(
            other.apply(&mut batch, 0).is_empty(),
            "no retention, nothing kept"
        );
    }
}
