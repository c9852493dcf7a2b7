//! OCI 1.1 referrers: the artifact manifest that attaches a document to an
//! image (`artifactType`, `subject`, the empty config, the document as its
//! one layer), and the referrers tag schema that registries without the
//! referrers API (distribution 2.8) are read through: a `sha256-<hex>` tag
//! holding an image index of the subject's referrers.

use serde_json::{Value, json};

use crate::oci::{Digest, media};

/// The empty config of an artifact manifest: `{}`.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY: &[u8] = b"{}";

/// A descriptor: media type, digest, size, and optionally more fields.
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size })
}

/// The artifact manifest attaching `layer` (the document's descriptor) to
/// `subject`.
pub fn artifact_manifest(
    artifact_type: &str,
    subject: &Value,
    layer: &Value,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Value {
    let empty = crate::oci::digest_of(EMPTY);
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY_MEDIA_TYPE, &empty, EMPTY.len() as u64),
        "layers": [layer],
        "subject": subject,
    });
    if let (false, Some(map)) = (annotations.is_empty(), manifest.as_object_mut()) {
        map.insert("annotations".to_owned(), json!(annotations));
    }
    manifest
}

/// The referrers tag of `subject`: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.digest())
}

/// The referrers index with `added` merged into what the tag held
/// (`existing`, if anything): entries already listed stay where they are,
/// new ones go after them. `None` when `existing` is not an image index.
pub fn merge_index(existing: Option<&[u8]>, added: &[Value]) -> Option<Value> {
    let mut manifests: Vec<Value> = match existing {
        None => Vec::new(),
        Some(bytes) => {
            let index: Value = serde_json::from_slice(bytes).ok()?;
            index.get("manifests")?.as_array()?.clone()
        }
    };
    for d in added {
        if !manifests.iter().any(|m| m.get("digest") == d.get("digest")) {
            manifests.push(d.clone());
        }
    }
    Some(json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_what_was_there_and_adds_once() {
        let a = descriptor(media::OCI_MANIFEST, &crate::oci::digest_of(b"a"), 1);
        let b = descriptor(media::OCI_MANIFEST, &crate::oci::digest_of(b"b"), 1);
        let first = merge_index(None, std::slice::from_ref(&a)).unwrap_or_default();
        let bytes = serde_json::to_vec(&first).unwrap_or_default();
        let second = merge_index(Some(&bytes), &[b.clone(), a.clone()]).unwrap_or_default();
        assert_eq!(second["manifests"], json!([a, b]));
        assert_eq!(merge_index(Some(b"[]"), &[]), None);
    }

    #[test]
    fn fallback_tag_is_algorithm_dash_hex() {
        let d = crate::oci::digest_of(b"x");
        assert_eq!(fallback_tag(&d), format!("sha256-{}", d.digest()));
    }
}
