//! Authenticate: who is calling. The connection's client certificate (checked
//! once per connection against the Portcullis CA) must still be within its
//! validity, and its agent and serial must be live in the current directory, so a
//! revocation takes effect on the very next request, even on a kept-alive connection.

use portcullis_core::ErrorCode;
use portcullis_identity::{CertRejection, PeerCertificate};

use crate::directory::{AgentDirectory, DirectoryRefusal};
use crate::respond::Denial;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Agent name (the Cedar principal id).
    pub agent: String,
    /// The SPIFFE ID of the certificate.
    pub spiffe_id: String,
    /// The certificate serial.
    pub serial: String,
}

/// A refusal, with what the client presented for the audit record.
#[derive(Debug)]
pub struct AuthnFailure {
    /// The response to give.
    pub denial: Denial,
    /// A description of the presented credential, if there was one.
    pub presented: Option<String>,
}

/// Runs the stage. `peer` is the per-connection certificate check (`None` when
/// no certificate was presented).
pub fn run(
    directory: &AgentDirectory,
    peer: Option<&Result<PeerCertificate, CertRejection>>,
    now_epoch: i64,
) -> Result<Identity, AuthnFailure> {
    let peer = match peer {
        None => {
            return Err(AuthnFailure {
                denial: Denial::new(
                    ErrorCode::Unauthenticated,
                    "a client certificate issued by Portcullis is required",
                ),
                presented: None,
            });
        }
        Some(Err(rejection)) => {
            return Err(AuthnFailure {
                denial: Denial::new(ErrorCode::InvalidCredential, rejection.reason.clone()),
                presented: Some(rejection.presented.clone()),
            });
        }
        Some(Ok(peer)) => peer,
    };
    let presented = || {
        Some(format!(
            "{} serial={} {}",
            peer.spiffe_id, peer.serial, peer.fingerprint
        ))
    };
    if peer.not_after <= now_epoch {
        return Err(AuthnFailure {
            denial: Denial::new(ErrorCode::InvalidCredential, "certificate expired"),
            presented: presented(),
        });
    }
    match directory.check(peer.agent.as_str(), &peer.serial) {
        Ok(_) => Ok(Identity {
            agent: peer.agent.to_string(),
            spiffe_id: peer.spiffe_id.clone(),
            serial: peer.serial.clone(),
        }),
        Err(refusal) => {
            let message = match refusal {
                DirectoryRefusal::UnknownAgent => "the agent is not registered",
                DirectoryRefusal::AgentRevoked => "the agent has been revoked",
                DirectoryRefusal::CertificateRevoked => {
                    "the certificate has been revoked or is unknown"
                }
            };
            Err(AuthnFailure {
                denial: Denial::new(ErrorCode::AgentRevoked, message),
                presented: presented(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::AgentName;
    use portcullis_store::{AgentRow, CertificateRow};

    fn peer(not_after: i64) -> PeerCertificate {
        PeerCertificate {
            agent: AgentName::parse("bot").unwrap(),
            spiffe_id: "spiffe://t/agent/bot".into(),
            serial: "01".into(),
            not_after,
            fingerprint: "sha256:00".into(),
        }
    }

    fn directory(agent_revoked: bool) -> AgentDirectory {
        AgentDirectory::new(
            &[AgentRow {
                name: "bot".into(),
                roles: vec![],
                created_at: 0,
                revoked_at: agent_revoked.then_some(1),
            }],
            &[CertificateRow {
                serial: "01".into(),
                agent: "bot".into(),
                spiffe_id: String::new(),
                issued_at: 0,
                not_after: 100,
                revoked_at: None,
            }],
        )
    }

    fn code(r: Result<Identity, AuthnFailure>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(f) => f.denial.code.as_str(),
        }
    }

    #[test]
    fn outcomes() {
        let live = directory(false);
        assert_eq!(code(run(&live, Some(&Ok(peer(100))), 50)), "ok");
        assert_eq!(code(run(&live, None, 50)), "unauthenticated");
        assert_eq!(
            code(run(&live, Some(&Ok(peer(100))), 100)),
            "invalid_credential"
        );
        let rejected = Err(CertRejection {
            reason: "x".into(),
            presented: "y".into(),
        });
        assert_eq!(code(run(&live, Some(&rejected), 50)), "invalid_credential");
        assert_eq!(
            code(run(&directory(true), Some(&Ok(peer(100))), 50)),
            "agent_revoked"
        );
        let mut other_serial = peer(100);
        other_serial.serial = "02".into();
        assert_eq!(
            code(run(&live, Some(&Ok(other_serial)), 50)),
            "agent_revoked"
        );
    }
}
