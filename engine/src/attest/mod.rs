//! Attestations attached to pushed images: SLSA provenance
//! ([`provenance`]) and an SPDX SBOM ([`sbom`], with Go binaries read by
//! [`gobuildinfo`]), each written into the store as an OCI 1.1 artifact
//! manifest whose subject is the image's manifest ([`referrers`]).
//! [`attestations`] makes them for one image; `exec/export.rs` pushes them
//! after the image, then the referrers tag.
//!
//! Every document is canonical JSON built from the build's inputs and the
//! image's bytes only, so the same build gives the same digests.

pub mod gobuildinfo;
pub mod provenance;
pub mod referrers;
pub mod sbom;
pub mod sign;

use std::collections::BTreeMap;

use miette::Diagnostic;
use serde_json::{Value, json};

use crate::Tier;
use crate::layer::LayerError;
use crate::oci::{Digest, media};
use crate::store::{Store, StoreError};

/// Which attestations a push attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attest {
    pub provenance: bool,
    pub sbom: bool,
}

impl Attest {
    /// Whether there is anything to attach.
    pub fn any(self) -> bool {
        self.provenance || self.sbom
    }
}

/// Media types of the attached documents.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const SPDX: &str = "application/spdx+json";

/// Errors while making attestations.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum AttestError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Layer(#[from] LayerError),

    #[error("could not write the {what}: {source}")]
    #[diagnostic(code(bake::attest::json))]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("the referrers tag {reference} holds something other than an image index")]
    #[diagnostic(
        code(bake::attest::referrers),
        help("the tag is bake's (and other tools') list of what is attached to the image; delete it to start it anew")
    )]
    BadReferrers { reference: String },
}

impl AttestError {
    pub fn tier(&self) -> Tier {
        match self {
            Self::Store(e) => e.tier(),
            Self::Layer(e) => e.tier(),
            Self::Json { .. } => Tier::Bug,
            Self::BadReferrers { .. } => Tier::Environment,
        }
    }
}

/// The image an attestation is about.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    /// The image's name (for the documents).
    pub name: &'a str,
    pub platform: Option<String>,
    pub manifest: Digest,
    pub media_type: &'a str,
    /// Its layers, bottom first, with their media types.
    pub layers: Vec<(Digest, String)>,
}

/// An artifact manifest in the store, ready to push.
#[derive(Debug, Clone)]
pub struct Attached {
    pub manifest: Digest,
    /// Its descriptor for the referrers index (with `artifactType`).
    pub descriptor: Value,
}

/// Writes the attestations `attest` asks for about `subject` into the
/// store: their documents, the empty config and their artifact manifests.
pub fn attestations(
    store: &Store,
    subject: &Subject<'_>,
    attest: Attest,
    inputs: &provenance::Inputs,
    created: &str,
) -> Result<Vec<Attached>, AttestError> {
    let size = store.blob_len(&subject.manifest).unwrap_or(0);
    let subject_desc = referrers::descriptor(subject.media_type, &subject.manifest, size);
    store.put_blob(referrers::EMPTY)?;
    let mut out = Vec::new();
    if attest.provenance {
        let doc = provenance::statement(subject.name, subject.platform.as_deref(), &subject.manifest, inputs);
        let annotations =
            BTreeMap::from([("in-toto.io/predicate-type".to_owned(), provenance::PREDICATE_TYPE.to_owned())]);
        out.push(attach(store, &subject_desc, IN_TOTO, &doc, &annotations, "provenance")?);
    }
    if attest.sbom {
        let contents = sbom::scan(store, &subject.layers)?;
        let doc = sbom::document(subject.name, &subject.manifest, created, &contents);
        out.push(attach(store, &subject_desc, SPDX, &doc, &BTreeMap::new(), "SBOM")?);
    }
    Ok(out)
}

/// One document into the store, with its artifact manifest.
fn attach(
    store: &Store,
    subject: &Value,
    artifact_type: &str,
    doc: &Value,
    annotations: &BTreeMap<String, String>,
    what: &'static str,
) -> Result<Attached, AttestError> {
    let json_error = |source| AttestError::Json { what, source };
    let bytes = crate::oci::canonical_json(doc).map_err(json_error)?;
    let digest = store.put_blob(&bytes)?;
    let layer = referrers::descriptor(artifact_type, &digest, bytes.len() as u64);
    let manifest = referrers::artifact_manifest(artifact_type, subject, &layer, annotations);
    let manifest_bytes = crate::oci::canonical_json(&manifest).map_err(json_error)?;
    let manifest_digest = store.put_blob(&manifest_bytes)?;
    let mut descriptor = referrers::descriptor(media::OCI_MANIFEST, &manifest_digest, manifest_bytes.len() as u64);
    if let Some(map) = descriptor.as_object_mut() {
        map.insert("artifactType".to_owned(), json!(artifact_type));
        if !annotations.is_empty() {
            map.insert("annotations".to_owned(), json!(annotations));
        }
    }
    Ok(Attached { manifest: manifest_digest, descriptor })
}
