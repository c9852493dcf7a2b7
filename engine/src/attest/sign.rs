//! Signatures in the sigstore format that containers/image (skopeo's
//! `--sign-by-sigstore-private-key`) writes and verifies: a "simple
//! signing" payload naming the image's reference and manifest digest,
//! signed with ECDSA P-256 (SHA-256, DER), stored as a layer of an OCI
//! manifest under the tag `sha256-<hex>.sig` with the base64 signature in
//! its `dev.cosignproject.cosign/signature` annotation. Signatures already
//! under that tag are kept.
//!
//! Keys are PEM ECDSA P-256 private keys, PKCS#8 (`openssl genpkey`) or
//! SEC1 (`openssl ecparam -genkey`); encrypted keys are refused for now.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use miette::Diagnostic;
use serde_json::{Value, json};

use crate::Tier;
use crate::oci::{Digest, media};

/// The media type of a signature layer (its blob is the payload).
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that holds the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Errors reading a signing key or signing.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SignError {
    #[error("cannot read the signing key {}: {source}", path.display())]
    #[diagnostic(code(bake::sign::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the signing key {} is {what}", path.display())]
    #[diagnostic(
        code(bake::sign::key),
        help(
            "give a PEM ECDSA P-256 private key, e.g. from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
        )
    )]
    BadKey { path: PathBuf, what: String },

    #[error("signing failed")]
    #[diagnostic(code(bake::sign::failed))]
    Failed,
}

impl SignError {
    pub fn tier(&self) -> Tier {
        match self {
            Self::Read { .. } => Tier::Environment,
            Self::BadKey { .. } => Tier::Input,
            Self::Failed => Tier::Bug,
        }
    }
}

/// A private key that signs payloads.
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// Reads a PEM private key from `path`.
    pub fn load(path: &Path) -> Result<Self, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Read { path: path.to_owned(), source })?;
        Self::from_pem(&text).map_err(|what| SignError::BadKey { path: path.to_owned(), what })
    }

    /// Parses a PEM private key; the error says what the text is instead.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let mut label = None;
        let mut body = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(l) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) {
                label = Some(l.to_owned());
            } else if line.starts_with("-----END ") {
                break;
            } else if label.is_some() {
                body.push_str(line);
            }
        }
        let label = label.ok_or("not a PEM file")?;
        if label.contains("ENCRYPTED") {
            return Err(format!("an encrypted key (`{label}`), which bake cannot read yet"));
        }
        if label != "PRIVATE KEY" && label != "EC PRIVATE KEY" {
            return Err(format!("a `{label}`, not a private key"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("not valid PEM: {e}"))?;
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
            .or_else(|_| EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der))
            .map_err(|_| "not an ECDSA P-256 private key".to_owned())?;
        Ok(Self { pair })
    }

    /// The base64 DER ECDSA signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> Result<String, SignError> {
        let signature = self.pair.sign(&SystemRandom::new(), payload).map_err(|_| SignError::Failed)?;
        Ok(base64::engine::general_purpose::STANDARD.encode(signature.as_ref()))
    }
}

/// The simple signing payload for `manifest` pushed as `reference`
/// (`host/repository:tag`).
pub fn payload(reference: &str, manifest: &Digest) -> Vec<u8> {
    let doc = json!({
        "critical": {
            "identity": { "docker-reference": reference },
            "image": { "docker-manifest-digest": manifest.to_string() },
            "type": "cosign container image signature",
        },
        "optional": { "creator": format!("bake {}", env!("CARGO_PKG_VERSION")) },
    });
    crate::oci::canonical_json(&doc).unwrap_or_default()
}

/// The tag signatures of `manifest` live under: `sha256-<hex>.sig`.
pub fn signature_tag(manifest: &Digest) -> String {
    format!("{}-{}.sig", manifest.algorithm(), manifest.digest())
}

/// The layers of the signature manifest the tag held, when it held one.
pub fn existing_layers(existing: Option<&[u8]>) -> Vec<Value> {
    existing
        .and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok())
        .and_then(|m| m.get("layers")?.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(SIMPLE_SIGNING))
        .collect()
}

/// The signature manifest's config and the manifest itself, with `layers`
/// (earlier signatures, then the new one): a config naming each payload as
/// a diff ID, as containers/image writes it.
pub fn signature_manifest(layers: &[Value]) -> (Vec<u8>, Value) {
    let diff_ids: Vec<&Value> = layers.iter().filter_map(|l| l.get("digest")).collect();
    let config = json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = crate::oci::canonical_json(&config).unwrap_or_default();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": super::referrers::descriptor(media::OCI_CONFIG, &crate::oci::digest_of(&config), config.len() as u64),
        "layers": layers,
    });
    (config, manifest)
}

/// A signature layer: the payload's descriptor with the signature.
pub fn signature_layer(payload: &[u8], signature: &str) -> Value {
    let mut layer = super::referrers::descriptor(SIMPLE_SIGNING, &crate::oci::digest_of(payload), payload.len() as u64);
    if let Some(map) = layer.as_object_mut() {
        map.insert("annotations".to_owned(), json!({ SIGNATURE_ANNOTATION: signature }));
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_p256_private_key() {
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert_eq!(SigningKey::from_pem(public).err().as_deref(), Some("a `PUBLIC KEY`, not a private key"));
        let encrypted =
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n";
        assert!(SigningKey::from_pem(encrypted).err().unwrap_or_default().contains("encrypted"));
        assert_eq!(SigningKey::from_pem("hello").err().as_deref(), Some("not a PEM file"));
    }

    #[test]
    fn earlier_signatures_are_kept() {
        let one = signature_layer(b"{}", "c2ln");
        let old = json!({ "layers": [one.clone(), { "mediaType": "other" }] });
        let bytes = serde_json::to_vec(&old).unwrap_or_default();
        assert_eq!(existing_layers(Some(&bytes)), [one]);
        assert!(existing_layers(None).is_empty());
    }
}
