//! OCI images: config documents, manifests, and the outputs images are
//! written to (the local store, OCI layouts, `docker load` archives).
//!
//! An image is assembled from a stage's result (its layers and its config
//! document) as an OCI manifest whose JSON is serialised canonically, so the
//! same build gives the same manifest digest on every machine. Timestamps come
//! from `SOURCE_DATE_EPOCH` (default 0), never from the clock.

mod config;
pub mod export;

pub use config::{ImageConfig, expand, host_architecture};

use std::path::PathBuf;

use miette::Diagnostic;
use serde_json::{Map, Value, json};

use crate::layer::LayerInfo;
use crate::oci::{Digest, media};
use crate::store::{ImageRecord, Store, StoreError};

/// Errors assembling or exporting images.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ImageError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),

    #[error("manifest {digest} in the store is not a usable image manifest")]
    #[diagnostic(code(bake::image::bad_manifest), help("remove the image and pull or build it again"))]
    BadManifest { digest: String },

    #[error("image `{name}` is built for {platforms}, but a `docker load` archive holds one platform")]
    #[diagnostic(
        code(bake::image::several_platforms),
        help("build one platform for this output, e.g. `--platform {first}`, or use `type=oci` for all of them")
    )]
    SeveralPlatforms { name: String, platforms: String, first: String },

    #[error("cannot write {}", path.display())]
    #[diagnostic(code(bake::image::output))]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An RFC 3339 timestamp for a `SOURCE_DATE_EPOCH` value.
pub fn timestamp(epoch: i64) -> String {
    let secs = u64::try_from(epoch).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// A manifest written to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub config: Digest,
    pub layers: Vec<LayerInfo>,
    pub record: ImageRecord,
}

/// Writes an image's config and OCI manifest into the store.
pub fn write_manifest(
    store: &Store,
    config: &ImageConfig,
    layers: &[LayerInfo],
    annotations: &[(String, String)],
    created: &str,
) -> Result<Manifest, StoreError> {
    let config_bytes = config.to_bytes();
    let config_digest = store.put_blob(&config_bytes)?;
    let mut manifest = Map::new();
    manifest.insert("schemaVersion".into(), json!(2));
    manifest.insert("mediaType".into(), json!(media::OCI_MANIFEST));
    manifest.insert(
        "config".into(),
        json!({ "mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len() }),
    );
    manifest.insert(
        "layers".into(),
        Value::Array(
            layers
                .iter()
                .map(|l| json!({ "mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size }))
                .collect(),
        ),
    );
    if !annotations.is_empty() {
        let map: Map<String, Value> = annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        manifest.insert("annotations".into(), Value::Object(map));
    }
    let bytes = crate::oci::canonical_json(&Value::Object(manifest)).unwrap_or_default();
    let digest = store.put_blob(&bytes)?;
    let size = bytes.len() as u64 + config_bytes.len() as u64 + layers.iter().map(|l| l.size).sum::<u64>();
    let record = ImageRecord {
        manifest: digest.clone(),
        media_type: media::OCI_MANIFEST.to_owned(),
        size,
        // Unknown (0) when a pulled layer's size is not known yet.
        uncompressed_size: if layers.iter().any(|l| l.uncompressed_size == 0) {
            0
        } else {
            layers.iter().map(|l| l.uncompressed_size).sum()
        },
        created: created.to_owned(),
    };
    Ok(Manifest {
        digest,
        media_type: media::OCI_MANIFEST.to_owned(),
        config: config_digest,
        layers: layers.to_vec(),
        record,
    })
}

/// An OCI image index of platform manifests already in the store, written
/// canonically to the store: the same manifests give the same digest.
/// Returns its digest and its record (the size counts every blob once).
pub fn write_index(
    store: &Store,
    manifests: &[(&Manifest, &crate::platform::Platform)],
    annotations: &[(String, String)],
    created: &str,
) -> Result<(Digest, ImageRecord), StoreError> {
    let mut entries = Vec::new();
    let mut blobs = std::collections::BTreeMap::new();
    for (m, p) in manifests {
        let size = store.blob_len(&m.digest).unwrap_or(0);
        let mut platform = json!({ "os": p.os, "architecture": p.architecture });
        if !p.variant.is_empty() {
            platform["variant"] = json!(p.variant);
        }
        entries.push(json!({
            "mediaType": m.media_type, "digest": m.digest.to_string(), "size": size, "platform": platform,
        }));
        blobs.insert(m.digest.to_string(), size);
        blobs.insert(m.config.to_string(), store.blob_len(&m.config).unwrap_or(0));
        for l in &m.layers {
            blobs.insert(l.digest.to_string(), l.size);
        }
    }
    let mut index = Map::new();
    index.insert("schemaVersion".into(), json!(2));
    index.insert("mediaType".into(), json!(media::OCI_INDEX));
    index.insert("manifests".into(), Value::Array(entries));
    if !annotations.is_empty() {
        let map: Map<String, Value> = annotations.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        index.insert("annotations".into(), Value::Object(map));
    }
    let bytes = crate::oci::canonical_json(&Value::Object(index)).unwrap_or_default();
    let digest = store.put_blob(&bytes)?;
    let record = ImageRecord {
        manifest: digest.clone(),
        media_type: media::OCI_INDEX.to_owned(),
        size: bytes.len() as u64 + blobs.values().sum::<u64>(),
        uncompressed_size: manifests.iter().map(|(m, _)| m.record.uncompressed_size).sum(),
        created: created.to_owned(),
    };
    Ok((digest, record))
}

/// The platforms an index in the store lists, as written.
pub fn index_platforms(store: &Store, digest: &Digest) -> Vec<(Digest, crate::platform::Platform)> {
    let doc: Value = store.read_blob(digest).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    doc.get("manifests")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    let d = Digest::try_from(m.get("digest")?.as_str()?).ok()?;
                    let p = m.get("platform")?;
                    let text = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
                    Some((d, crate::platform::Platform::new(&text("os"), &text("architecture"), &text("variant"))))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A layer as a manifest lists it: digest, size, media type.
pub type LayerDescriptor = (Digest, u64, String);

/// A manifest's config digest and layer descriptors, read back from the
/// store (OCI or Docker v2 schema 2).
pub fn read_manifest(store: &Store, digest: &Digest) -> Result<(Digest, Vec<LayerDescriptor>), ImageError> {
    let bytes = store.read_blob(digest)?;
    manifest_parts(&bytes).ok_or_else(|| ImageError::BadManifest { digest: digest.to_string() })
}

/// The config digest and layer descriptors of a manifest's bytes; `None`
/// when it names no valid config digest.
pub(crate) fn manifest_parts(bytes: &[u8]) -> Option<(Digest, Vec<LayerDescriptor>)> {
    let doc: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let config = doc.pointer("/config/digest").and_then(Value::as_str).and_then(|d| Digest::try_from(d).ok())?;
    let layers = doc
        .get("layers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    let d = Digest::try_from(l.get("digest")?.as_str()?).ok()?;
                    let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
                    let media_type = l.get("mediaType").and_then(Value::as_str).unwrap_or(media::OCI_LAYER_GZIP);
                    Some((d, size, media_type.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default();
    Some((config, layers))
}

impl ImageError {
    /// Whose the error is: the store's or the disk's.
    pub fn tier(&self) -> crate::Tier {
        match self {
            Self::Store(e) => e.tier(),
            Self::SeveralPlatforms { .. } => crate::Tier::Input,
            Self::BadManifest { .. } | Self::Output { .. } => crate::Tier::Environment,
        }
    }
}
