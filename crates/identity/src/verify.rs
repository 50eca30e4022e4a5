//! Verifying the client certificates agents present.
//!
//! Verification is split in two on purpose. At the TLS handshake,
//! [`DeferredClientAuth`] asks for a client certificate and checks the handshake
//! signature (proof that the peer holds the key) but accepts any chain. Right
//! after the handshake the gateway calls [`ClientCertChecker::check`] once per
//! connection — the full chain, validity and SPIFFE-ID check — and the
//! authenticate stage consults that result on every request, re-checking expiry
//! and whether the agent and serial are still live. Deferring lets a bad
//! certificate be answered with a JSON 401 and an audit record naming what was
//! presented, instead of a bare TLS alert nobody can audit.
//!
//! **Architecture Invariant:** a connection's peer certificate is never trusted
//! until `ClientCertChecker::check` accepted it; the gateway's authenticate stage is
//! the only caller that turns a certificate into an agent identity.

use std::sync::Arc;

use portcullis_core::AgentName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::{CaError, SpiffeId};

/// What an accepted client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The agent named by the SPIFFE ID.
    pub agent: AgentName,
    /// The SPIFFE ID from the URI SAN.
    pub spiffe_id: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
    /// `sha256:<hex>` of the DER certificate.
    pub fingerprint: String,
}

/// Why a presented certificate was refused, and a safe description of it for the
/// audit record (fingerprint and subject; never key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct CertRejection {
    /// Why it was refused.
    pub reason: String,
    /// `sha256:<hex>` plus the subject, when the certificate parsed.
    pub presented: String,
}

/// The full check of a presented client certificate chain.
#[derive(Debug, Clone)]
pub struct ClientCertChecker {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertChecker {
    /// A checker that trusts only `ca_cert_pem` and SPIFFE IDs of `trust_domain`.
    pub fn new(ca_cert_pem: &str, trust_domain: &str) -> Result<Self, CaError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes()) {
            let cert = cert.map_err(|e| CaError::InvalidCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| CaError::InvalidCa(e.to_string()))?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| CaError::InvalidCa(e.to_string()))?;
        Ok(ClientCertChecker {
            webpki,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// The handshake-level verifier to put into the server's TLS configuration.
    pub fn tls_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DeferredClientAuth {
            inner: self.webpki.clone(),
        })
    }

    /// Checks a presented chain (end entity first) at time `now`: signed by the
    /// Portcullis CA, inside its validity window, usable for client auth, and
    /// naming exactly one agent of this trust domain.
    pub fn check(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerCertificate, CertRejection> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(CertRejection {
                reason: "no client certificate".into(),
                presented: String::new(),
            });
        };
        let fingerprint = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(end_entity.as_ref()))
        );
        let parsed = x509_parser::parse_x509_certificate(end_entity.as_ref());
        let presented = match &parsed {
            Ok((_, cert)) => format!("{fingerprint} subject=\"{}\"", cert.subject()),
            Err(_) => fingerprint.clone(),
        };
        let reject = |reason: String| CertRejection {
            reason,
            presented: presented.clone(),
        };
        if let Err(e) = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)
        {
            return Err(reject(describe_rustls_error(&e)));
        }
        let cert = match parsed {
            Ok((_, cert)) => cert,
            Err(e) => return Err(reject(format!("malformed certificate: {e}"))),
        };
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push(*uri);
                }
            }
        }
        let [uri] = uris.as_slice() else {
            return Err(reject(format!(
                "certificate must carry exactly one URI SAN, found {}",
                uris.len()
            )));
        };
        let Some(spiffe) = SpiffeId::parse_agent(uri, &self.trust_domain) else {
            return Err(reject(format!(
                "`{uri}` is not an agent SPIFFE ID of trust domain `{}`",
                self.trust_domain
            )));
        };
        Ok(PeerCertificate {
            agent: spiffe.agent().clone(),
            spiffe_id: spiffe.to_string(),
            serial: hex::encode(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint,
        })
    }
}

fn describe_rustls_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not yet valid".into()
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "certificate not issued by the Portcullis CA".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate is not valid for client authentication".into()
            }
            CertificateError::BadEncoding => "malformed certificate".into(),
            // Other rejections carry rustls-internal detail; clients get a stable text.
            _ => "certificate rejected".into(),
        },
        _ => "certificate rejected".into(),
    }
}

/// The handshake-level client verifier: requests a certificate (hinting the
/// Portcullis CA), verifies the handshake signature, defers the chain check.
#[derive(Debug)]
pub struct DeferredClientAuth {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // A missing certificate is answered with a JSON 401 by the authenticate stage.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to ClientCertChecker::check; see the module docs.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use std::time::Duration;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn issue(ca: &CertificateAuthority, name: &str, ttl: u64) -> crate::IssuedCertificate {
        let (_key, csr) = crate::new_agent_key_and_csr().unwrap();
        ca.issue_agent(
            &AgentName::parse(name).unwrap(),
            &csr,
            Duration::from_secs(ttl),
        )
        .unwrap()
    }

    #[test]
    fn accepts_own_agents_and_rejects_the_rest() {
        let ca = CertificateAuthority::generate("portcullis.local").unwrap();
        let checker = ClientCertChecker::new(ca.cert_pem(), "portcullis.local").unwrap();
        let now = UnixTime::now();

        let issued = issue(&ca, "bot", 3600);
        let peer = checker.check(&[der(&issued.pem)], now).unwrap();
        assert_eq!(peer.agent.as_str(), "bot");
        assert_eq!(peer.spiffe_id, "spiffe://portcullis.local/agent/bot");
        assert_eq!(peer.serial, issued.serial);
        assert_eq!(peer.not_after, issued.not_after);

        // Expired: checked two hours later.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs() + 7200));
        let err = checker.check(&[der(&issued.pem)], later).unwrap_err();
        assert_eq!(err.reason, "certificate expired");
        assert!(err.presented.starts_with("sha256:"), "{}", err.presented);

        // Foreign CA with the same trust domain and agent name.
        let foreign = CertificateAuthority::generate("portcullis.local").unwrap();
        let forged = issue(&foreign, "bot", 3600);
        let err = checker.check(&[der(&forged.pem)], now).unwrap_err();
        assert_eq!(err.reason, "certificate not issued by the Portcullis CA");
        assert!(err.presented.contains("CN=bot"), "{}", err.presented);

        // A server certificate from our own CA is not a client credential.
        let (server_pem, _) = ca.issue_server(&["localhost".into()]).unwrap();
        let err = checker.check(&[der(&server_pem)], now).unwrap_err();
        assert_eq!(
            err.reason,
            "certificate is not valid for client authentication"
        );

        // Another trust domain's checker refuses our agents.
        let other = ClientCertChecker::new(ca.cert_pem(), "other.example").unwrap();
        assert!(other.check(&[der(&issued.pem)], now).is_err());

        assert!(checker.check(&[], now).is_err());
    }

    #[test]
    fn ca_round_trips_through_pem_and_bounds_ttl() {
        let ca = CertificateAuthority::generate("td.example").unwrap();
        let reloaded =
            CertificateAuthority::from_pem("td.example", ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = issue(&reloaded, "x", 60);
        let checker = ClientCertChecker::new(ca.cert_pem(), "td.example").unwrap();
        checker.check(&[der(&issued.pem)], UnixTime::now()).unwrap();

        let (_k, csr) = crate::new_agent_key_and_csr().unwrap();
        let name = AgentName::parse("x").unwrap();
        assert!(ca.issue_agent(&name, &csr, Duration::ZERO).is_err());
        assert!(
            ca.issue_agent(&name, &csr, Duration::from_secs(365 * 86400))
                .is_err()
        );
        assert!(
            ca.issue_agent(&name, "not a csr", Duration::from_secs(60))
                .is_err()
        );
    }
}
