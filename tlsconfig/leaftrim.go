package tlsconfig

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
)

// What a loaded certificate's parsed leaf keeps.
//
// certmagic keeps every cached certificate's leaf parsed (tls.Certificate's
// Leaf) for as long as it is cached; at 100,000 loaded names that is the
// largest part of what a name costs (bench/README.md, memory of a loaded
// name). x509.ParseCertificate allocates, beside the struct, every
// extension (an OID slice and a header each, the value pointing into the
// DER), every attribute of the subject and issuer names, every
// certificate policy OID twice (PolicyIdentifiers and Policies), the
// public key, the extended key usages and the CA issuer URLs. Nothing
// reads those on a served certificate, so trimLeaf drops them: ~1.9 KB of
// a Let's Encrypt-shaped leaf's ~4.0 KB (ten extensions, a policy, an SCT
// list), ~0.5 KB of the bench's four-extension leaves. What is read, and
// kept (checked against certmagic v0.25.6, acmez v3.1.7, x/crypto/ocsp
// and crypto/tls of Go 1.26):
//
//   - certmagic: NotBefore/NotAfter (expiry, renewal window, choosing among
//     certificates in a handshake), Subject.CommonName, DNSNames,
//     IPAddresses, EmailAddresses, URIs (the names it indexes);
//     acmez's ARI identifier: SerialNumber, AuthorityKeyId.
//   - crypto/tls: only SupportsCertificate reads the leaf (VerifyHostname:
//     DNSNames, IPAddresses; the key type comes from PrivateKey.Public(),
//     not the leaf's PublicKey) and RawIssuer on the client side; a
//     server's handshake sends Certificate's DER, not the leaf. certmagic
//     checks that key and certificate match when it makes the pair, with
//     its own parse, before anything is cached. Its OCSP stapling parses
//     the stored bundle again (OCSPServer, IssuingCertificateURL there).
//   - gatehouse: Raw (self-check, storage sync), SerialNumber (revocation,
//     storage sync, logs), OCSPServer (stapler), CRLDistributionPoints
//     (CRL watcher), NotBefore/NotAfter and DNSNames (renewal, inventory,
//     metrics), Issuer.CommonName (inventory, for certificates it parses
//     itself; kept anyway: it is a string into the DER).
//   - x509 methods a caller might use on the leaf: Verify reads
//     Extensions, PolicyIdentifiers, Policies, ExtKeyUsage and PublicKey
//     (as a parent), but nothing verifies a served certificate's own leaf
//     (import verifies its pair before it is cached, with its own parse).
//     HostnameError's message looks for the subjectAltName extension, so
//     that one extension is kept. pkix.Name.String() lists attributes of
//     unknown types from Names; the usual ones stay in their fields.
//
// Code that needs a dropped field of a served certificate must parse
// Certificate[0] itself (TestTrimmedLeafServesAndRenews lists what is
// dropped).
//
// The Raw* fields point into the DER the leaf was parsed from (Raw): they
// cost a slice header each, not a copy, and are kept.
//
// trimLeaf writes into a leaf certmagic has cached, so it runs where
// shareChain does (lazy.go, loadOne): before the name's waiting
// handshakes go on, for a certificate naming that one name. The fields it
// writes are ones nothing reads, so even a reader of the same leaf
// elsewhere (the maintenance goroutine reads NotAfter) does not race with
// it.
func trimLeaf(leaf *x509.Certificate) {
	if leaf == nil {
		return
	}
	// the subjectAltName extension alone, its OID shared by every leaf
	var san []pkix.Extension
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			san = []pkix.Extension{{Id: oidSubjectAltName, Critical: e.Critical, Value: e.Value}}
			break
		}
	}
	leaf.Extensions = san
	leaf.Subject.Names = nil
	leaf.Issuer.Names = nil
	leaf.PolicyIdentifiers = nil
	leaf.Policies = nil
	leaf.PublicKey = nil // PublicKeyAlgorithm stays
	leaf.ExtKeyUsage = nil
	leaf.UnknownExtKeyUsage = nil
	leaf.IssuingCertificateURL = nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
