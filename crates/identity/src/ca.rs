//! The built-in certificate authority: a self-signed ECDSA P-256 root that issues
//! the gateway's TLS server certificates and agents' client certificates (SVIDs).

use std::time::Duration;

use portcullis_core::AgentName;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::SpiffeId;

/// Why the CA could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA certificate or key PEM is unusable.
    #[error("invalid CA material: {0}")]
    InvalidCa(String),
    /// The certificate signing request does not parse or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The requested lifetime is zero or longer than the CA allows.
    #[error("invalid certificate lifetime: {0}")]
    InvalidTtl(String),
    /// Signing failed.
    #[error("cannot sign certificate: {0}")]
    Sign(String),
}

/// The longest lifetime an agent certificate may have: credentials are short-lived.
pub const MAX_AGENT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest lifetime an admin client certificate may have.
pub const MAX_ADMIN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The organisation in the subject of admin client certificates.
pub const ADMIN_ORGANIZATION: &str = "Portcullis admins";
/// Clock skew tolerated by back-dating `notBefore`.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A certificate the CA issued, with what the registry needs to remember of it.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The certificate, PEM encoded.
    pub pem: String,
    /// The serial number, lowercase hex: the registry's key for revocation.
    pub serial: String,
    /// The SPIFFE ID in the URI SAN (empty for an admin certificate).
    pub spiffe_id: String,
    /// End of validity, seconds since the epoch.
    pub not_after: i64,
}

/// The Portcullis CA.
pub struct CertificateAuthority {
    trust_domain: String,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately not printed.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive 127-bit integer with no leading zero byte: DER integers are signed
    // and minimal, and a fixed length keeps the hex form stable.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// Creates a new root CA for `trust_domain`, valid ten years.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis");
        dn.push(DnType::CommonName, format!("Portcullis CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key, both PEM.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::InvalidCa(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| CaError::InvalidCa(e.to_string()))?;
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The trust domain a CA made by [`CertificateAuthority::generate`]
    /// names in its common name (`Portcullis CA <trust-domain>`), for tools
    /// that load the CA without the server's configuration. `None` for a CA
    /// that does not follow that form.
    pub fn trust_domain_of(cert_pem: &str) -> Option<String> {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        let domain = cn.strip_prefix("Portcullis CA ")?;
        (!domain.is_empty() && !domain.contains(char::is_whitespace)).then(|| domain.to_string())
    }

    /// The trust domain of the SPIFFE IDs this CA issues.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM — only for writing to the state directory.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues an agent's client certificate for the public key in `csr_pem`.
    ///
    /// Everything but the public key is decided here, not taken from the CSR: the
    /// subject, the SPIFFE URI SAN, the client-auth EKU and the validity window.
    pub fn issue_agent(
        &self,
        agent: &AgentName,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        if ttl.is_zero() || ttl > MAX_AGENT_TTL {
            return Err(CaError::InvalidTtl(format!(
                "{}s is outside 1s..{}s",
                ttl.as_secs(),
                MAX_AGENT_TTL.as_secs()
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let spiffe_id = SpiffeId::for_agent(&self.trust_domain, agent).to_string();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis agents");
        dn.push(DnType::CommonName, agent.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .as_str()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
        )];
        self.sign_client(csr, params, ttl, spiffe_id)
    }

    /// Issues a human or automation admin's client certificate for the
    /// public key in `csr_pem`: subject `CN=<name>, O=Portcullis admins`,
    /// client-auth EKU, and no SPIFFE ID, so the data plane (which admits
    /// only certificates naming an agent) never takes it for an agent. The
    /// admin API binds the credential to this exact certificate (its
    /// fingerprint), not to its subject.
    pub fn issue_admin(
        &self,
        name: &str,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        if ttl.is_zero() || ttl > MAX_ADMIN_TTL {
            return Err(CaError::InvalidTtl(format!(
                "{}s is outside 1s..{}s",
                ttl.as_secs(),
                MAX_ADMIN_TTL.as_secs()
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::InvalidCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, ADMIN_ORGANIZATION);
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        self.sign_client(csr, params, ttl, String::new())
    }

    /// Signs a client-auth certificate for the key of `csr`, with the
    /// subject (and names) `params` carries, valid from now (backdated by
    /// [`BACKDATE`] for clock skew) for `ttl`, under a random serial.
    fn sign_client(
        &self,
        csr: CertificateSigningRequestParams,
        mut params: CertificateParams,
        ttl: Duration,
        spiffe_id: String,
    ) -> Result<IssuedCertificate, CaError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        let not_after = now + ttl;
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.as_ref());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial: serial_hex,
            spiffe_id,
            not_after: not_after.unix_timestamp(),
        })
    }

    /// Issues a TLS server certificate and its new key (PEM) for the given DNS names
    /// and IP addresses, valid one year.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis");
        dn.push(
            DnType::CommonName,
            names.first().map_or("portcullis", |n| n),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(365);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Makes an agent key (ECDSA P-256) and a CSR for it. The CLI calls this so the
/// private key is created where it will be used and never crosses the network.
pub fn new_agent_key_and_csr() -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| CaError::Sign(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((key.serialize_pem(), csr_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ca_names_its_trust_domain() {
        let ca = CertificateAuthority::generate("acme.example").unwrap();
        assert_eq!(
            CertificateAuthority::trust_domain_of(ca.cert_pem()).as_deref(),
            Some("acme.example")
        );
        assert_eq!(CertificateAuthority::trust_domain_of("not a pem"), None);
    }

    #[test]
    fn an_admin_certificate_names_its_admin_and_is_never_an_agent() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, UnixTime};
        let ca = CertificateAuthority::generate("acme.example").unwrap();
        let (_key, csr) = new_agent_key_and_csr().unwrap();
        let day = Duration::from_secs(86_400);
        let issued = ca.issue_admin("alice", &csr, day).unwrap();
        assert!(issued.spiffe_id.is_empty());
        let der = CertificateDer::from_pem_slice(issued.pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            format!("O={ADMIN_ORGANIZATION}, CN=alice")
        );
        let checker = crate::ClientCertChecker::new(ca.cert_pem(), "acme.example").unwrap();
        assert!(checker.check(&[der], UnixTime::now()).is_err());
        assert!(matches!(
            ca.issue_admin("alice", &csr, MAX_ADMIN_TTL + day),
            Err(CaError::InvalidTtl(_))
        ));
    }
}
