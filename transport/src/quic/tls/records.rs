//! [`MemberCertAuth`]: member records signed and verified with cluster certificates, the
//! [`MemberAuth`] of every ring node.
//!
//! - **Signing**: with the node's TLS private key (ECDSA, Ed25519 or RSA-PSS, whatever the
//!   identity holds), through the ring provider. The signature is two bytes of TLS
//!   `SignatureScheme` (big-endian) followed by the signature, so a verifier knows the
//!   algorithm without trusting anything else.
//! - **Verifying**: the published chain's end entity must chain to the [`ClusterCa`] now
//!   (signature, validity, `serverAuth` usage, as a QUIC peer's must); the signature must
//!   verify with its public key under one of the schemes listed in `SIGN_SCHEMES` (all of
//!   them TLS 1.3 schemes); and the claimed node id must
//!   equal one of its DNS names (exactly; wildcards never match), or one of its IP
//!   addresses when the node id is an IP address. The dev CA names node certificates by
//!   node name, which is the node id.

use std::net::IpAddr;
use std::sync::Arc;

use kraken_membership::{MemberAuth, NodeId, RecordError, SignError};
use rustls::RootCertStore;
use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::SigningKey;

use super::{ClusterCa, NodeIdentity, TlsError, peer_id_of_cert, provider};
use crate::wire::PeerId;

/// Schemes this node signs with, in order of preference (the key picks the one it can), and
/// the only ones accepted (all allowed in TLS 1.3).
const SIGN_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA512,
];

/// Signs this node's member record with its TLS identity and verifies others' against the
/// cluster CA: chain, signature with a TLS 1.3 scheme, and a DNS or IP name equal to the
/// claimed node id.
pub struct MemberCertAuth {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for MemberCertAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberCertAuth")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl MemberCertAuth {
    /// The auth of the node holding `identity` in the cluster of `ca`.
    pub fn new(identity: &NodeIdentity, ca: &ClusterCa) -> Result<Self, TlsError> {
        let provider = provider();
        let key = provider
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(TlsError::KeyMismatch)?;
        Ok(MemberCertAuth {
            chain: identity.cert_chain.clone(),
            key,
            roots: ca.root_store()?,
            provider,
        })
    }

    fn verify_chain(&self, chain: &[Vec<u8>]) -> Result<(), RecordError> {
        let untrusted =
            |e: &dyn std::fmt::Display| RecordError::UntrustedCertificate(e.to_string());
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| untrusted(&"no certificate"))?;
        let end_entity = CertificateDer::from(end_entity.as_slice());
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let parsed = ParsedCertificate::try_from(&end_entity).map_err(|e| untrusted(&e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &intermediates,
            UnixTime::now(),
            self.provider.signature_verification_algorithms.all,
        )
        .map_err(|e| untrusted(&e))
    }

    /// Checks `signature` (two bytes of scheme, then the signature) over `message` with
    /// `cert`'s key, under one of `SIGN_SCHEMES` only.
    fn verify_signature(
        &self,
        cert: &webpki::EndEntityCert<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), RecordError> {
        let bad = |what: &str| RecordError::BadSignature(what.to_owned());
        let (scheme, sig) = match signature {
            [a, b, sig @ ..] => (SignatureScheme::from(u16::from_be_bytes([*a, *b])), sig),
            _ => return Err(bad("too short")),
        };
        if !SIGN_SCHEMES.contains(&scheme) {
            return Err(bad("signature scheme not allowed"));
        }
        let alg = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .and_then(|(_, algs)| algs.first())
            .ok_or_else(|| bad("unsupported signature scheme"))?;
        cert.verify_signature(*alg, message, sig)
            .map_err(|e| RecordError::BadSignature(e.to_string()))
    }

    /// Verifies a message signed by any member of the cluster and says who signed it: the
    /// chain must verify against the cluster CA and the signature with its end entity's
    /// key (as [`MemberAuth::verify`] does, without a node name), and the answer is that
    /// end entity's [`PeerId`] ([`peer_id_of_cert`]). The DHT's signed cards use this to
    /// bind a DHT identity to a kraken peer id.
    pub fn verify_signer(
        &self,
        chain: &[Vec<u8>],
        message: &[u8],
        signature: &[u8],
    ) -> Result<PeerId, RecordError> {
        self.verify_chain(chain)?;
        let der = CertificateDer::from(chain[0].as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| RecordError::UntrustedCertificate(e.to_string()))?;
        self.verify_signature(&cert, message, signature)?;
        peer_id_of_cert(&der).map_err(|e| RecordError::UntrustedCertificate(e.to_string()))
    }
}

impl MemberAuth for MemberCertAuth {
    fn certificate_chain(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|c| c.to_vec()).collect()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let signer = self.key.choose_scheme(&SIGN_SCHEMES).ok_or_else(|| {
            SignError("the key supports none of the record signature schemes".into())
        })?;
        let scheme = signer.scheme();
        let signature = signer.sign(message).map_err(|e| SignError(e.to_string()))?;
        let mut out = u16::from(scheme).to_be_bytes().to_vec();
        out.extend(signature);
        Ok(out)
    }

    fn verify(
        &self,
        chain: &[Vec<u8>],
        message: &[u8],
        signature: &[u8],
        node_id: &NodeId,
    ) -> Result<(), RecordError> {
        self.verify_chain(chain)?;
        // Parsed again by webpki for the key and names (verify_chain checked it parses).
        let der = CertificateDer::from(chain[0].as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| RecordError::UntrustedCertificate(e.to_string()))?;
        self.verify_signature(&cert, message, signature)?;
        let claimed = node_id.as_str();
        let named = match claimed.parse::<IpAddr>() {
            Ok(ip) => cert
                .verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                .is_ok(),
            Err(_) => cert.valid_dns_names().any(|n| n == claimed),
        };
        if named {
            Ok(())
        } else {
            Err(RecordError::NameMismatch {
                claimed: node_id.clone(),
                names: cert_names(&cert),
            })
        }
    }
}

/// The DNS names of a certificate, for error messages.
fn cert_names(cert: &webpki::EndEntityCert<'_>) -> Vec<String> {
    cert.valid_dns_names()
        .take(16)
        .map(|n| n.chars().take(128).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::dev::DevCa;
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_record_signed_by_a_cluster_node_verifies_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let origin = ca.issue_node_cert("origin-1").unwrap();
        let auth = MemberCertAuth::new(&origin, &ca.cluster_ca()).unwrap();
        let chain = auth.certificate_chain();
        let msg = b"kraken-member-v1\0record";
        let sig = auth.sign(msg).unwrap();
        assert_eq!(auth.verify(&chain, msg, &sig, &id("origin-1")), Ok(()));

        // Another message, a flipped signature byte, a truncated signature.
        assert!(matches!(
            auth.verify(&chain, b"other", &sig, &id("origin-1")),
            Err(RecordError::BadSignature(_))
        ));
        let mut flipped = sig.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            auth.verify(&chain, msg, &flipped, &id("origin-1")),
            Err(RecordError::BadSignature(_))
        ));
        assert!(matches!(
            auth.verify(&chain, msg, &sig[..1], &id("origin-1")),
            Err(RecordError::BadSignature(_))
        ));
        // A scheme TLS 1.3 does not allow.
        let mut pkcs1 = sig.clone();
        pkcs1[..2].copy_from_slice(&u16::from(SignatureScheme::RSA_PKCS1_SHA256).to_be_bytes());
        assert!(matches!(
            auth.verify(&chain, msg, &pkcs1, &id("origin-1")),
            Err(RecordError::BadSignature(_))
        ));

        // Its certificate does not name origin-2.
        match auth.verify(&chain, msg, &sig, &id("origin-2")) {
            Err(RecordError::NameMismatch { claimed, names }) => {
                assert_eq!(claimed.as_str(), "origin-2");
                assert_eq!(names, ["origin-1"]);
            }
            other => panic!("{other:?}"),
        }

        // Another node's certificate with origin-1's signature.
        let other = ca.issue_node_cert("origin-2").unwrap();
        let other_chain = vec![other.cert_chain[0].to_vec()];
        assert!(matches!(
            auth.verify(&other_chain, msg, &sig, &id("origin-2")),
            Err(RecordError::BadSignature(_))
        ));

        // A node of another CA, signing correctly with its own key.
        let foreign_dir = tempfile::tempdir().unwrap();
        let foreign_ca = DevCa::create(foreign_dir.path()).unwrap();
        let intruder = foreign_ca.issue_node_cert("origin-1").unwrap();
        let intruder_auth = MemberCertAuth::new(&intruder, &foreign_ca.cluster_ca()).unwrap();
        let intruder_sig = intruder_auth.sign(msg).unwrap();
        assert_eq!(
            intruder_auth.verify(
                &intruder_auth.certificate_chain(),
                msg,
                &intruder_sig,
                &id("origin-1")
            ),
            Ok(()),
            "valid in its own cluster"
        );
        assert!(matches!(
            auth.verify(
                &intruder_auth.certificate_chain(),
                msg,
                &intruder_sig,
                &id("origin-1")
            ),
            Err(RecordError::UntrustedCertificate(_))
        ));

        // Garbage certificates.
        for garbage in [vec![], vec![vec![]], vec![vec![0x30, 0x03, 1, 2, 3]]] {
            assert!(matches!(
                auth.verify(&garbage, msg, &sig, &id("origin-1")),
                Err(RecordError::UntrustedCertificate(_))
            ));
        }
    }

    #[test]
    fn verify_signer_names_the_signing_member_and_rejects_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca.issue_node_cert("agent-1").unwrap();
        let auth = MemberCertAuth::new(&node, &ca.cluster_ca()).unwrap();
        let chain = auth.certificate_chain();
        let sig = auth.sign(b"card").unwrap();
        assert_eq!(auth.verify_signer(&chain, b"card", &sig), Ok(node.peer_id));
        assert!(matches!(
            auth.verify_signer(&chain, b"other", &sig),
            Err(RecordError::BadSignature(_))
        ));
        let foreign_dir = tempfile::tempdir().unwrap();
        let foreign_ca = DevCa::create(foreign_dir.path()).unwrap();
        let intruder = foreign_ca.issue_node_cert("agent-1").unwrap();
        let intruder_auth = MemberCertAuth::new(&intruder, &foreign_ca.cluster_ca()).unwrap();
        let intruder_sig = intruder_auth.sign(b"card").unwrap();
        assert!(matches!(
            auth.verify_signer(&intruder_auth.certificate_chain(), b"card", &intruder_sig),
            Err(RecordError::UntrustedCertificate(_))
        ));
        assert!(auth.verify_signer(&[], b"card", &sig).is_err());
    }

    #[test]
    fn ip_node_ids_match_ip_names_and_wildcards_never_match() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca
            .issue_node_cert_with_sans("10.0.0.7", &["10.0.0.7", "*.example.com"])
            .unwrap();
        let auth = MemberCertAuth::new(&node, &ca.cluster_ca()).unwrap();
        let sig = auth.sign(b"m").unwrap();
        let chain = auth.certificate_chain();
        assert_eq!(auth.verify(&chain, b"m", &sig, &id("10.0.0.7")), Ok(()));
        assert!(auth.verify(&chain, b"m", &sig, &id("10.0.0.8")).is_err());
        assert!(matches!(
            auth.verify(&chain, b"m", &sig, &id("a.example.com")),
            Err(RecordError::NameMismatch { .. })
        ));
    }
}
